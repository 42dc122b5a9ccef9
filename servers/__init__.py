"""Where tokens come from: the in-process transformers engine (and the toy kit for offline use)."""
