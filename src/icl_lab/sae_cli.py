"""`icl-lab sae ...`: train and resume SAE runs, write their dashboards, export an SAE for SAELens."""

import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from icl_lab.cli_options import Device, Quiet, RunsDir, export_directory, given_path, resume_on
from icl_lab.errors import RunStoreError

app = typer.Typer(
    help="Sparse autoencoders on attention outputs (hook_z) of trained runs.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
console = Console(soft_wrap=True)

SAERunDir = Annotated[Path, typer.Argument(help="SAE run directory.")]


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="SAE config YAML.")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a config field: key.path=value (repeatable)."),
    ] = None,
    runs_dir: RunsDir = Path("runs"),
    quiet: Quiet = False,
) -> None:
    """Train an SAE on hook_z of a run's checkpoint, as an SAE config describes; writes runs/<id>/."""
    from icl_lab.sae.config import load_sae_config
    from icl_lab.sae.run import open_source, train_sae

    settings = load_sae_config(config, set_ or [])
    source = open_source(settings, settings.training.device)
    if source.unfinished:
        console.print(f"note: the SAE reads {source.unfinished}")
    run = train_sae(settings, runs_dir, progress=not quiet, source=source)
    console.print(f"SAE run complete: {run.path}")


@app.command()
def resume(run: SAERunDir, device: Device = None, quiet: Quiet = False) -> None:
    """Continue an interrupted SAE run from its latest checkpoint, bit-identically on the CPU."""
    from icl_lab.sae.run import SAERun, resume_sae

    handle = SAERun.open(run)
    if handle.status == "complete":  # checked as a resume would be: the files, the config, the device
        handle.check_whole()
        handle.check_config()
        handle.load_checkpoint(handle.manifest["total_steps"])  # a damaged end is refused, not complete
        resume_on([handle.config], device)
        console.print(f"SAE run {handle.id} is already complete")
        return
    if handle.status == "running":
        raise RunStoreError(f"SAE run {handle.id} is being trained by another process")
    if handle.status == "diverged":
        raise RunStoreError(
            f"SAE run {handle.id} diverged at step {handle.manifest.get('diverged_at')}; resuming would "
            "repeat it: train a changed config (e.g. a smaller lr or L1 coefficient) afresh"
        )
    resume_on([handle.config], device)
    resume_sae(handle, progress=not quiet)
    console.print(f"SAE run complete: {handle.path}")


@app.command()
def export(
    run: SAERunDir,
    out: Annotated[
        Path, typer.Argument(parser=given_path, help="Directory to write (cfg.json, sae_weights.safetensors)")
    ],
    step: Annotated[int | None, typer.Option(help="Checkpoint step (default: the latest).")] = None,
) -> None:
    """Write the SAE in SAELens's on-disk format (load with sae_lens.SAE.load_from_disk)."""
    from icl_lab.sae.export import export_saelens
    from icl_lab.sae.run import SAERun

    handle = SAERun.open(run)
    source = handle.config.source
    model_run = Path(source.run).name
    hook, context = f"blocks.{source.layer}.attn.hook_z", handle.manifest["n_ctx"]
    step_read = handle.manifest.get("source_step", source.step)  # older runs: their config's
    read = {"run": source.run, "step": step_read, "member": source.member}
    export_saelens(handle.sae(step), export_directory(out, run), hook, model_run, context, handle.scale, read)
    console.print(f"SAELens SAE: {out}")
    at = f" at step {read['step']:,}" if read["step"] is not None else ""
    pair = ["icl-lab", "export", source.run, "TL_OUT"]
    pair += ["--checkpoint", str(read["step"])] if read["step"] is not None else []
    pair += ["--member", str(source.member)] if source.member else []
    reads = f"it reads {hook} of {model_run}{at}{f', member {source.member}' if source.member else ''}"
    changed = handle.source_changed()
    matches = (  # another checkpoint's or member's activations would silently be the wrong ones
        f"{changed}, so no TransformerLens model matches it"
        if changed
        else f"the TransformerLens model it matches: {shlex.join(pair)}"
        if Path(source.run).is_dir()
        else f"that model run is gone ({source.run}), so no TransformerLens model matches it"
    )
    console.print(f"{reads}; {matches}", highlight=False)


@app.command()
def dashboard(
    run: SAERunDir,
    sequences: Annotated[int, typer.Option(min=1, help="Held-out sequences to score.")] = 32,
    cards: Annotated[int, typer.Option(min=0, help="Feature cards, spread over the density ranking.")] = 48,
    features: Annotated[
        str | None, typer.Option(help="Comma-separated feature ids to show as cards instead.")
    ] = None,
) -> None:
    """Write RUN/dashboard/index.html: densities, head attribution, families, a searchable feature
    list and top-activating contexts shaded by direct feature attribution."""
    from icl_lab.errors import ConfigError
    from icl_lab.sae.dashboard import write_dashboard
    from icl_lab.sae.run import SAERun

    chosen = None
    if features is not None:
        try:
            chosen = [int(f) for f in features.split(",")]
        except ValueError:
            raise ConfigError(f"--features: give comma-separated integers (got {features!r})") from None
    page = write_dashboard(SAERun.open(run), sequences, cards, features=chosen)
    console.print(f"dashboard: {page}")
