"""The ground floor: the words every other room shares, importing nothing of switchgen's above it.

config (SwitchConfig, presets), errors, files (SWITCHGEN_HOME, atomic writes), jsonl (the one line
format), records and jobs (what commands write and read back), prompts (how each model sees the
trace), seeds, trace (Segment, Decision).
"""
