"""Dimension search: DNIS, pruning to a budget, and the search pipeline with its baselines."""
