"""User-facing errors: each carries one line that names the problem; the CLI exits with code 2."""


class IclLabError(Exception):
    """An error the user can fix (bad config, missing file, corrupt checkpoint)."""


class ConfigError(IclLabError):
    """A configuration that cannot be run."""


class CheckpointError(IclLabError):
    """A checkpoint that is missing, truncated, corrupt or from another run."""


class RunStoreError(IclLabError):
    """A run directory that is missing or malformed."""
