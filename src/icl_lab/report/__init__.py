"""Reports: PNG figures and a self-contained HTML page per run."""
