"""The icl-lab command line: train, resume, eval, export, list, report, sweep, reproduce, demo, sae.

Every user error (bad config, missing file, corrupt checkpoint, bad argument) prints one line and
exits with code 2.
"""

import itertools
import shlex
import signal
import socket
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import torch
import typer
from rich.console import Console
from rich.table import Table

from icl_lab.cli_options import Device, Quiet, RunsDir, export_directory, given_path, resume_on
from icl_lab.errors import ConfigError, IclLabError, Interrupted, RunStoreError, user_frame
from icl_lab.sae_cli import app as sae_app

app = typer.Typer(
    help="icl-lab: train, clamp and dissect small models on in-context-learning tasks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: no type labels after flags, fits 80 columns
)
app.add_typer(sae_app, name="sae")
console = Console(soft_wrap=True)  # paths in messages must stay copyable
err_console = Console(stderr=True)

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config field: key.path=value (repeatable)."),
]


def _overrides(overrides: list[str] | None, device: str | None) -> list[str]:
    if device is not None and not device.strip():  # as an override it would read as null
        raise ConfigError("--device: unknown device '' (use cpu, cuda or cuda:N)")
    return [*(overrides or []), *([f"training.device={device}"] if device is not None else [])]


@app.command()
def train(
    config: Annotated[str, typer.Argument(help="Config YAML file, or the name of a bundled one.")],
    set_: SetOption = None,
    runs_dir: RunsDir = Path("runs"),
    device: Device = None,
    quiet: Quiet = False,
) -> None:
    """Train a model as a config describes; writes runs/<id>/."""
    from icl_lab.experiment import config_notes, load_config
    from icl_lab.training.trainer import train as train_run

    cfg = load_config(config, _overrides(set_, device))
    for note in config_notes(cfg):
        console.print(f"note: {note}", highlight=False)
    run = train_run(cfg, str(runs_dir), progress=not quiet)
    console.print(f"run complete: {run.path}")


@app.command()
def resume(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    device: Device = None,
    quiet: Quiet = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Resume a run marked running on another host whose process you know is gone. Risky: "
            "two processes training one run directory corrupt it.",
        ),
    ] = False,
) -> None:
    """Continue an interrupted run from its latest checkpoint, bit-identically on the CPU."""
    from icl_lab.store.run import Run
    from icl_lab.training.trainer import resume as resume_run

    handle = Run.open(run)
    status = handle.status
    if status == "complete":  # checked as a resume would be: the files, the config, the device
        handle.check_whole()
        handle.check_config()
        handle.load_checkpoint(handle.manifest["total_steps"])  # a damaged end is refused, not complete
        resume_on(handle.configs, device)
        console.print(f"run {handle.id} is already complete")
        return
    if status == "diverged":
        raise RunStoreError(
            f"run {handle.id} diverged at step {handle.manifest.get('diverged_at')}; resuming would "
            "repeat it: train a changed config (e.g. a smaller learning rate) afresh"
        )
    if status == "running" and handle.manifest.get("host") == socket.gethostname():
        raise RunStoreError(  # its lock is held: the process lives
            f"run {handle.id} is being trained by pid {handle.manifest.get('pid')} on this host: "
            "wait for it, or stop it (it can be resumed then)"
        )
    if status == "running" and not force:
        where = f"pid {handle.manifest.get('pid')} on host {handle.manifest.get('host')}"
        raise RunStoreError(
            f"run {handle.id} is marked running ({where}); if that process is gone (its machine "
            "died), resume --force"
        )
    resume_on(handle.configs, device)

    def starting(step: int | None) -> None:
        latest = handle.checkpoint_steps[-1] if handle.checkpoint_steps else None
        where = "the start" if step is None else f"its checkpoint at step {step:,}"
        note = (
            "" if step == latest else f" (checkpoints after it lie past a gap in {handle.metrics_path.name})"
        )
        console.print(f"resuming {handle.id} from {where}{note}", soft_wrap=True)

    try:
        resume_run(handle, progress=not quiet, on_step=starting)
    except Interrupted as stop:
        if device is not None:  # the same move again
            stop.continue_with = shlex.join(["icl-lab", "resume", str(handle.path), "--device", device])
        raise
    console.print(f"run complete: {handle.path}")


@app.command(name="eval")
def eval_(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    checkpoint: Annotated[int | None, typer.Option(help="Step of the checkpoint (default: latest).")] = None,
    member: Annotated[int, typer.Option(help="Ensemble member.")] = 0,
) -> None:
    """Evaluate a checkpoint of one member on every split (its own task, seed, batches and
    clamps) and print its metrics."""
    from icl_lab.evaluation import evaluate, metric_names
    from icl_lab.store.run import Run

    handle = Run.open(run)
    if checkpoint is None:  # "the latest" must be the end of a complete run
        handle.check_whole()
    model = handle.model(checkpoint, member)
    step = checkpoint if checkpoint is not None else handle.checkpoint_steps[-1]
    config = handle.member_config(member)
    task, batches = handle.eval_data(member)
    clamps, metrics = handle.clamps_at(step, member), metric_names(config, model)
    console.print(f"[bold]{handle.id}[/] step {step}, member {member}, seed {config.seed}")
    for split, batch in batches.items():
        values = evaluate(model, task, batch, metrics, clamps)
        console.print(_metrics_table(f"split {split} ({len(batch.inputs)} sequences)", values))


def _metrics_table(title: str, values: dict[str, torch.Tensor]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value / per head (rows: layers)")
    for name, value in values.items():
        if value.dim() == 0:
            table.add_row(name, f"{value.item():.4f}")
        else:
            rows = ["  ".join(f"{v:6.3f}" for v in layer) for layer in value.tolist()]
            table.add_row(name, "\n".join(rows))
    return table


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    out: Annotated[
        Path,
        typer.Argument(parser=given_path, help="Directory to write (tl_config.json, tl_weights.safetensors)"),
    ],
    checkpoint: Annotated[int | None, typer.Option(help="Step of the checkpoint (default: latest).")] = None,
    member: Annotated[int, typer.Option(help="Ensemble member.")] = 0,
) -> None:
    """Write a trained transformer for TransformerLens: load it with
    icl_lab.interop.transformer_lens.load_hooked_transformer(OUT)."""
    from icl_lab.interop.transformer_lens import export_transformer_lens
    from icl_lab.interventions.base import active_at
    from icl_lab.store.run import Run

    handle = Run.open(run)
    if checkpoint is None:
        handle.check_whole()  # else "the latest" would be an earlier step of a damaged run
    export_transformer_lens(handle.model(checkpoint, member), export_directory(out, run), handle.id)
    step = checkpoint if checkpoint is not None else handle.checkpoint_steps[-1]
    unfinished = "" if handle.status == "complete" else f" (step {step:,} of a run that is {handle.status})"
    console.print(f"TransformerLens model: {out}{unfinished}")
    clamps = active_at(handle.member_config(member).clamps, step)
    if clamps:
        kinds = ", ".join(sorted({c.kind for c in clamps}))
        console.print(
            f"note: the run trains with clamps active at step {step:,} ({kinds}); the export holds "
            "its weights alone, and TransformerLens runs them unclamped"
        )


class Listable(StrEnum):
    reproductions = "reproductions"
    tasks = "tasks"
    models = "models"
    metrics = "metrics"
    clamps = "clamps"
    runs = "runs"
    experiments = "experiments"


@app.command(name="list")
def list_(
    what: Annotated[Listable, typer.Argument(help="What to list.")],
    runs_dir: RunsDir = Path("runs"),
) -> None:
    """List registered tasks, models, metrics, clamp kinds, bundled experiments or runs (model and
    SAE runs)."""
    from icl_lab.experiment import BUNDLED_CONFIGS
    from icl_lab.interventions import CLAMPS
    from icl_lab.metrics import METRICS
    from icl_lab.models import MODELS
    from icl_lab.registry import summary
    from icl_lab.reproduce import REPRODUCTIONS
    from icl_lab.sae.run import SAERun
    from icl_lab.store.run import Run, list_runs
    from icl_lab.tasks import TASKS

    table, notes = Table(show_header=True), []
    if what is Listable.runs:
        if not runs_dir.is_dir():
            raise RunStoreError(f"--runs-dir: {runs_dir} is not a directory (no runs trained there yet?)")
        for column in ("run", "kind", "status", "step", "created"):
            table.add_column(column)
        unreadable: dict[Path, str] = {}
        for r in list_runs(runs_dir, kinds=(Run, SAERun), unreadable=unreadable):
            total, status = r.manifest.get("total_steps", "?"), r.status
            try:
                r.check_whole()
            except IclLabError as e:
                status = "damaged (below)"
                notes.append(f"{r.path}: {e}")
            table.add_row(
                str(r.path),
                "SAE" if isinstance(r, SAERun) else "model",
                status,
                f"{r.manifest.get('last_checkpoint', 0)}/{total}",
                r.manifest["created"],
            )
        for path, why in unreadable.items():
            table.add_row(str(path), "?", "unreadable (below)", "", "")
            notes.append(f"{path}: {why}")
    else:
        table.add_column(what.value)
        table.add_column("description")
        entries = {
            Listable.tasks: [(n, summary(c.__doc__)) for n, c in TASKS.items()],
            Listable.models: [(n, summary(c.__doc__)) for n, c in MODELS.items()],
            Listable.metrics: [(n, m.description) for n, m in METRICS.items()],
            Listable.clamps: [(n, summary(c.__doc__)) for n, c in CLAMPS.items()],
            Listable.reproductions: [
                (n, f"{r.title} (--quick: {r.quick_budget}; full: {r.full_scale})")
                for n, r in REPRODUCTIONS.items()
            ],
            Listable.experiments: [(p.stem, _header(p)) for p in sorted(BUNDLED_CONFIGS.glob("*.yaml"))],
        }[what]
        for name, text in entries:
            table.add_row(name, text)
    console.print(table)
    for note in notes:
        console.print(note, highlight=False, soft_wrap=True, markup=False)


def _header(path: Path) -> str:
    """The comment block that opens a config file, as one paragraph."""
    lines = path.read_text().splitlines()
    header = [line.lstrip("# ") for line in itertools.takewhile(lambda line: line.startswith("#"), lines)]
    return " ".join(header)


@app.command()
def report(
    target: Annotated[Path, typer.Argument(help="Run or sweep directory.")],
    member: Annotated[
        int | None,
        typer.Option(help="Ensemble member (default 0; its report goes to report/member<M>/ for M > 0)."),
    ] = None,
) -> None:
    """Write report.html (self-contained) and PNG figures into TARGET/report/."""
    if (target / "sweep.yaml").is_file():
        if member is not None:
            raise ConfigError("--member reports one member of an ensemble run, not a sweep")
        from icl_lab.report.sweep import write_sweep_report

        console.print(f"report: {write_sweep_report(target)}")
        return
    if (target / "plan.json").is_file():
        raise RunStoreError(f"{target} is a sweep directory without its sweep.yaml, which its report reads")
    from icl_lab.report.page import write_report
    from icl_lab.store.run import Run

    console.print(f"report: {write_report(Run.open(target).view(member or 0))}")


@app.command()
def dissect(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", "-s", help="A dissect setting: key.path=value, e.g. llc.chains=8 (repeatable)."
        ),
    ] = None,
    budget: Annotated[
        int | None,
        typer.Option(
            min=1, help="Training steps of each clamped variant (default: 1.5 x the last transition's end)."
        ),
    ] = None,
    causal: Annotated[
        bool | None,
        typer.Option(
            "--causal/--no-causal",
            help="Train clamped variants to find what each transition needs (default: causal.enabled).",
        ),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Parallel processes (checkpoints, then variants).")] = 2,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """The run's developmental stages and what caused each: the LLC at its checkpoints, stages on
    that curve beside every logged metric's transitions, then clamped variants of the run trained
    from the start to find which heads each transition needs. Writes RUN/dissect/ (report.html);
    resumable: run it again to continue, work done with the same settings is kept."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    from icl_lab.analysis.causal import variants_device
    from icl_lab.analysis.dissect import dissect as dissect_run
    from icl_lab.analysis.dissect import dissect_causal, dissect_config
    from icl_lab.report.dissect_page import write_dissect_report
    from icl_lab.store.run import Run

    flags = {"causal.steps": budget, "causal.enabled": causal}  # given flags win over --set
    settings = [*(set_ or []), *(f"{key}={value}" for key, value in flags.items() if value is not None)]
    handle, config = Run.open(run), dissect_config(settings)
    handle.check_whole()
    if config.causal.enabled:  # before the LLC's minutes, not after
        variants_device(handle, config.member, config.causal)
    columns = (
        "LLC at checkpoints",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    try:
        with Progress(*columns, console=err_console, disable=quiet) as bar:
            task = bar.add_task("llc", total=None)
            result = dissect_run(
                handle, config, workers, lambda done, total: bar.update(task, completed=done, total=total)
            )
        console.print(f"{len(result.stages)} stages, {len(result.transitions)} metric transitions")
        causal_on = config.causal.enabled
        effects = dissect_causal(handle, config, workers, progress=not quiet) if causal_on else None
    except Interrupted as stop:  # the same command continues it, keeping the work done
        stop.continue_with = shlex.join(["icl-lab", *sys.argv[1:]])
        raise
    for e in effects.effects if effects else []:
        console.print(f"transition {e.variant.transition + 1}, {e.variant.name}: {e.effect} ({e.verdict})")
    console.print(f"report: {write_dissect_report(handle, result, config, effects)}")


class ExecutorName(StrEnum):
    local = "local"
    ray = "ray"


@app.command()
def sweep(
    target: Annotated[
        str, typer.Argument(help="Sweep YAML file, or 'status' followed by a sweep directory.")
    ],
    sweep_dir: Annotated[Path | None, typer.Argument(help="With status: the sweep directory.")] = None,
    executor: Annotated[
        ExecutorName, typer.Option(help="local: a process pool; ray: Ray tasks.")
    ] = ExecutorName.local,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Parallel runs (local processes or Ray CPUs); on a CPU, ensemble: auto packs "
            "tiny models into an ensemble per worker.",
        ),
    ] = 2,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: start Ray locally).")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="Override a sweep field: key=value.")
    ] = None,
    runs_dir: RunsDir = Path("runs"),
    quiet: Quiet = False,
) -> None:
    """Run a sweep (resuming where an earlier run of it stopped), or show a sweep's status."""
    from icl_lab.sweeps.run import sweep_status

    if target == "status":
        if sweep_dir is None:
            raise IclLabError("sweep status needs a sweep directory")
        counts, units = sweep_status(sweep_dir)
        table = Table("run", "points", "status")
        for unit, n, status in units:
            table.add_row(unit, str(n), status)
        console.print(table)
        console.print(", ".join(f"{n} {status}" for status, n in sorted(counts.items())) + " points")
        return
    if sweep_dir is not None:
        raise IclLabError(
            f"sweep {target} takes no second argument ({sweep_dir}): its runs go to --runs-dir/<sweep name>"
        )
    from icl_lab.report.sweep import write_sweep_report
    from icl_lab.sweeps.config import load_sweep
    from icl_lab.sweeps.run import run_sweep

    if address is not None and executor.value != "ray":
        raise ConfigError("--address names a Ray cluster: give --executor ray with it")
    config = load_sweep(target, set_ or [])
    out = runs_dir / config.name
    try:
        results = run_sweep(config, out, executor.value, workers, progress=not quiet, address=address)
    except Interrupted as stop:  # the same command continues it
        again = ["icl-lab", "sweep", target, *(a for s in set_ or [] for a in ("--set", s))]
        again += ["--runs-dir", str(runs_dir), "--executor", executor.value, "--workers", str(workers)]
        stop.continue_with = shlex.join([*again, *(["--address", address] if address else [])])
        raise
    statuses = results.column("status").to_pylist()
    console.print(
        f"{statuses.count('complete')} of {len(statuses)} points complete; results: {out / 'results.parquet'}"
    )
    for row in results.to_pylist():
        if row["status"] != "complete":
            console.print(f"point {row['point']} {row['status']}: {row['error']}", soft_wrap=True)
    console.print(f"report: {write_sweep_report(out)}")
    unfinished = [str(row["point"]) for row in results.to_pylist() if row["status"] != "complete"]
    if unfinished:
        raise IclLabError(
            f"{len(unfinished)} of {len(statuses)} sweep points did not complete: "
            f"point{'s' if len(unfinished) > 1 else ''} {', '.join(unfinished)} (see above)"
        )


@app.command(name="reproduce")
def reproduce_(
    name: Annotated[
        str, typer.Argument(help="Reproduction name (icl-lab list reproductions), or 'all' for every one.")
    ],
    quick: Annotated[bool, typer.Option("--quick", help="Laptop-scale version (minutes on a CPU).")] = False,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Parallel training processes; on a CPU, tiny models' runs train as an ensemble per process.",
        ),
    ] = 2,
    runs_dir: RunsDir = Path("runs"),
    resume: Annotated[
        Path | None,
        typer.Option(
            parser=given_path,
            help="An earlier reproduce-NAME-MODE-* directory: keep its finished runs, continue the "
            "interrupted ones, judge the claims again (with 'all': reproductions already judged are kept).",
        ),
    ] = None,
    docs: Annotated[
        Path | None,
        typer.Option(
            parser=given_path,
            help="Also publish the claims to DOCS/claims.md (full mode: DOCS/claims-full.md), figures "
            "copied to DOCS/images/claims/NAME/ and DOCS/notes/NAME.md linked where it exists (the "
            "repository's page: --docs docs). One reproduction replaces its own section only.",
        ),
    ] = None,
    device: Annotated[
        str,
        typer.Option(
            help="Device the models and SAEs train on (cpu, cuda, cuda:N). Runs that differ only in "
            "seed or data settings train as one vmapped ensemble (on a CPU only tiny models). A "
            "reproduction made of sweeps resumes on the device kind it started on."
        ),
    ] = "cpu",
    quiet: Quiet = False,
) -> None:
    """Train a paper's experiments and print each of its claims beside our measurement; 'all' runs
    every reproduction in turn and writes one page of all their claims (claims.md, claims.html)."""
    from icl_lab.config import check_device
    from icl_lab.report.claims_page import published_name
    from icl_lab.reproduce import REPRODUCTIONS, reproduce, reproduce_all

    try:
        check_device(device)
    except ValueError as e:
        raise ConfigError(f"--device: {e}") from None
    published = docs / f"{published_name('quick' if quick else 'full')}.md" if docs is not None else None
    if name == "all":
        by_name, out = reproduce_all(quick, runs_dir, workers, not quiet, resume, docs=docs, device=device)
        table = Table()
        for column in ("reproduction", "claims reproduced"):
            table.add_column(column)
        for key, claims in by_name.items():
            table.add_row(key, f"{sum(c.reproduced for c in claims)} of {len(claims)}")
        console.print(table)
        console.print(f"every claim, with seeds and links to each run's report: {out / 'claims.html'}")
        if published is not None:
            console.print(f"published: {published}")
        return
    reproduction = REPRODUCTIONS.get(name)
    mode = f"quick: {reproduction.quick_budget}" if quick else f"full: {reproduction.full_scale}"
    console.print(f"[bold]{reproduction.title}[/] ({mode})")
    claims, out = reproduce(name, quick, runs_dir, workers, not quiet, resume, device, docs)
    table = Table(show_lines=True)
    for column in ("finding", "paper", "ours", "seeds", "verdict"):
        table.add_column(column)
    for claim in claims:
        verdict = "[green]reproduced[/]" if claim.reproduced else "[red]not reproduced[/]"
        table.add_row(claim.finding, claim.paper, claim.ours, ", ".join(map(str, claim.seeds)), verdict)
    console.print(table)
    console.print(
        f"{sum(c.reproduced for c in claims)} of {len(claims)} claims reproduced; runs and claims.md in {out}"
    )
    if published is not None:
        console.print(f"published: {published}")


@app.command()
def demo(
    set_: SetOption = None,
    runs_dir: RunsDir = Path("runs"),
    device: Device = None,
    quiet: Quiet = False,
) -> None:
    """Bursty few-shot classification (Reddy 2024): train until an induction head forms, detect the
    transition, write the report."""
    from icl_lab.analysis.summary import summary_lines
    from icl_lab.experiment import load_config
    from icl_lab.report.page import write_report
    from icl_lab.training.trainer import train as train_run

    cfg = load_config("reddy_fast", _overrides(set_, device))
    run = train_run(cfg, str(runs_dir), progress=not quiet)
    page = write_report(run)
    for line in summary_lines(run):
        console.print(line, soft_wrap=True)
    console.print(f"report: {page}", soft_wrap=True)


DEBUG = False


@app.callback()
def options(
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of an error.")] = False,
) -> None:
    """icl-lab: train, clamp and dissect small models on in-context-learning tasks."""
    global DEBUG
    DEBUG = debug


def _fail(message: str, code: int) -> NoReturn:
    err_console.print(message, highlight=False, soft_wrap=True, markup=False)
    raise SystemExit(code)


def _from(path: object) -> str:
    """Where `resume` of the run at `path` picks up: its latest checkpoint (progress since is lost)."""
    from icl_lab.store.run import Run

    try:
        steps = Run.open(path).checkpoint_steps
    except (IclLabError, OSError):
        return ""
    return f" (from step {max(steps):,}, its latest checkpoint)" if steps else " (from the start)"


def main() -> None:
    """Entry point: every failure is one line on stderr (the traceback only with --debug). User
    errors (IclLabError, and files the system cannot read or write) exit with code 2, an
    interrupted run with 130 (Ctrl-C) or 143 (SIGTERM), anything unexpected with 1."""

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    # exceptions of ours: click swallows Ctrl-C's, and SIGTERM would kill a sweep's parent process
    # without stopping its workers (the trainer installs its own handler while it trains)
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = app(standalone_mode=False)
    except Interrupted as stop:
        if DEBUG:
            raise
        command = stop.continue_with or (
            f"icl-lab resume {stop.run_path}{_from(stop.run_path)}" if stop.run_path else None
        )
        after = f"; continue with: {command}" if command else ""
        _fail(f"interrupted ({stop.signal_name}){after}", 143 if stop.signal_name == "SIGTERM" else 130)
    except typer.exceptions.TyperException as e:  # the parser's errors: a bad argument or option
        message, ctx = e.format_message(), getattr(e, "ctx", None)
        if ctx is None or "\n" in message:  # no command to point at, or the help text itself
            e.show()
            raise SystemExit(e.exit_code) from None
        message = message.replace("Value error, ", "").rstrip(".")  # pydantic's prefix of a refused value
        _fail(f"error: {message} (see '{ctx.command_path} --help')", e.exit_code)
    except Exception as e:
        if DEBUG:
            raise
        if isinstance(e, IclLabError):
            _fail(f"error: {e}", 2)
        if isinstance(e, OSError):
            _fail(f"error: {e.filename or 'a file'}: {e.strerror or e}", 2)
        if where := user_frame(e):  # a user's component raised it: theirs to fix
            _fail(f"error in {where}: {type(e).__name__}: {e} (--debug shows the traceback)", 2)
        _fail(f"internal error: {type(e).__name__}: {e} (run again with --debug for the traceback)", 1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if isinstance(code, int) and code:
        raise SystemExit(code)
