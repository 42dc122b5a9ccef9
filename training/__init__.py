"""Training a switcher: rollouts (the paper's labels, through the graph) and LoRA SFT on them.

    switchgen rollouts --task T --preset P --out rollouts.jsonl   # training/rollouts.py
    switchgen train --data rollouts.jsonl --out adapter/          # training/train.py
"""
