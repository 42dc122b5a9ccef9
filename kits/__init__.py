"""Offline checkpoint kits that tests, demos and notebooks build locally instead of downloading.

toy: random tiny P/F/A and switcher checkpoints that exercise every code path (their text is noise).
"""
