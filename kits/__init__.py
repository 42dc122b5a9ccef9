"""Offline checkpoint kits that tests, demos and notebooks build locally instead of downloading.

toy: random tiny P/F/A and switcher checkpoints that exercise every code path (their text is noise).
skills: tiny P/F/A trained locally whose skills really differ, with tasks where each single model
    wins and one that needs switching (preset `skills`); for tests about outcomes.
cache: the atomic build both use.
"""
