"""Running many experiments: executors that train a list of configs."""
