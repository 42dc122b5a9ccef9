"""switchgen eval: methods over tasks, scored, with confidence intervals."""
