"""Real text, offline: corpora, tokenisers and cached token streams for the text_lm task."""
