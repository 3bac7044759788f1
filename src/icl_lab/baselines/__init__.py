"""Baselines that models are compared with: in-context n-gram models, ..."""
