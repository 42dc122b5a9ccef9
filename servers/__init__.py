"""Where tokens come from: the in-process engine (engine/), inference-server clients (clients/) and
`switchgen serve` (serve/). What every token source shares lives here: the Backend surface (base),
stop strings (stops), the switcher's digit choices (choices) and TGI's wire vocabulary (protocol).

Nothing here imports switchgen.graph or switchgen.nodes: servers know prompts only as text.
"""
