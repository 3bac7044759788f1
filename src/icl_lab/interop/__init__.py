"""Hand icl-lab's models to the tools researchers already use (TransformerLens)."""
