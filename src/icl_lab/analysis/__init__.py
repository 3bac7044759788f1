"""Analyses that read a run store: summaries, transitions, ablations."""
