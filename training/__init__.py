"""Training: a switcher (rollouts, the paper's labels, through the graph; LoRA SFT on them), and
distilling switch generation's answers into one model.

    switchgen rollouts --task T --preset P --out rollouts.jsonl   # training/rollouts.py
    switchgen train --data rollouts.jsonl --out adapter/          # training/train.py
    switchgen distill --outputs eval-train/ --task T --out D/    # training/distill.py
"""
