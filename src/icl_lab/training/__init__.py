"""Training: the one trainer (a run is an ensemble of one), optimisers and schedules."""
