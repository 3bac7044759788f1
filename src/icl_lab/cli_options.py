"""Options shared by `icl-lab` commands and its `sae` subcommands."""

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer


def given_path(value: str | Path) -> Path:
    """A path option's value; an empty one is refused (Path('') would quietly mean the current directory)."""
    if isinstance(value, str) and not value.strip():
        raise typer.BadParameter("is empty: give a directory")
    return Path(value)


def export_directory(out: Path, run: Path) -> Path:
    """An export's OUT directory; ConfigError if it is the run directory itself."""
    from icl_lab.errors import ConfigError

    if out.resolve() == run.resolve():
        raise ConfigError(f"OUT is the run directory itself ({run}): choose another directory")
    return out


Device = Annotated[str | None, typer.Option(help="Device to train on, e.g. cpu or cuda.")]
RunsDir = Annotated[Path, typer.Option(parser=given_path, help="Directory holding run directories.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


def resume_on(configs: Iterable[Any], device: str | None) -> None:
    """Point a stored run's configs at --device (checked against this machine) before it resumes;
    the device is outside the config hash, so the run stays the same run."""
    from icl_lab.config import check_device
    from icl_lab.errors import ConfigError

    if device is None:
        return
    try:
        check_device(device)
    except ValueError as e:
        raise ConfigError(f"--device: {e}") from None
    for config in configs:
        config.training.device = device
