"""Compiled training steps (training.compile): the same training as eager within rounding, clamps
included; bit-identical resume; auto compiles only runs long enough to repay compiling."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TINY_FEWSHOT, TINY_READOUT_MODEL, tiny_config
from icl_lab.errors import ConfigError, DivergenceError
from icl_lab.experiment import ExperimentConfig, build_task, load_config, validate_config
from icl_lab.models import native_mamba, recurrence
from icl_lab.models.recurrence import selective_scan
from icl_lab.store.run import Run
from icl_lab.tasks import Batch
from icl_lab.training import compiled
from icl_lab.training import trainer as trainer_module
from icl_lab.training.compiled import (
    AUTO_MEMBER_STEPS,
    CPU_INDUCTOR_OPTIONS,
    KERNEL_MEMBER_STEPS,
    compile_settings,
    should_compile,
)
from icl_lab.training.trainer import Trainer, resume, train
from test_trainer import CUDA, S4D_INV_ADAMW, killed_copy

STEPS = 20
ADAM = {"optimizer": {"name": "adam", "lr": 0.01}, "batch_size": 8, "length": {"steps": STEPS}}
SGD = {**ADAM, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}}
MIXER = {
    "name": "mixer_lm",
    "mixer": "linear_attention",
    "n_layers": 1,
    "d_model": 16,
    "n_heads": 2,
    "chunk": 8,
}
MAMBA = {"name": "mixer_lm", "mixer": "mamba", "n_layers": 1, "d_model": 16}
# complex modes (as pairs of reals), and parameters without weight decay (a second param group
# eager, a second functional update compiled), in members at different learning rates
S4D_INV = S4D_INV_ADAMW["model"]
ADAMW = {**ADAM, "optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 0.5}}
# no biases: the key bias's gradient is zero up to rounding (softmax ignores a shift common to a
# query's scores), and Adam would blow that rounding noise up into full-size steps
TRANSFORMER = {"bias": False}
CLAMPED = [
    {"kind": "ablate", "heads": ["1.0"], "mode": "mean"},
    {"kind": "ablate_preserving", "heads": ["0.1"], "preserve": "pattern"},
    {"kind": "ablate", "heads": ["1.0"]},  # zero: no gradient may reach the head's output weights
]


def trained_params(members: list[ExperimentConfig], mode: str, tmp_path: Path) -> dict[str, torch.Tensor]:
    """Parameters after STEPS training steps with training.compile = mode."""
    configs = [
        m.model_copy(update={"training": m.training.model_copy(update={"compile": mode})}) for m in members
    ]
    trainer = Trainer(Run.create(configs, tmp_path / mode), progress=False)
    for _ in range(STEPS):
        trainer.train_step()
    assert trainer.compiled == (mode == "on"), "the step compiled as one graph throughout"
    return {k: v.detach() for k, v in trainer.state.params.items()}


@pytest.mark.parametrize(
    ("members", "zeroed"),
    [  # a single transformer: in the resume test below
        pytest.param([tiny_config(training=SGD, model=MIXER)], None, id="mixer"),
        # compiled: the native kernels inside the compiled step; eager: torch's scan and conv
        pytest.param([tiny_config(training=SGD, model=MAMBA)], None, id="mamba-native-kernels"),
        pytest.param(
            [
                tiny_config(
                    training={**ADAMW, "optimizer": {**ADAMW["optimizer"], "lr": lr}}, model=S4D_INV, seed=s
                )
                for s, lr in ((0, 0.01), (1, 0.02))
            ],
            None,
            id="s4d-inv-ensemble",
        ),
        pytest.param(
            [
                tiny_config(training=ADAM, model=TRANSFORMER, seed=s, clamps=[c])
                for s, c in enumerate(CLAMPED)
            ],
            2,
            id="clamped-ensemble",
        ),
        # Singh's task: members' batches drawn together, read in from their tables' rows
        pytest.param(
            [
                tiny_config(
                    task=TINY_FEWSHOT, model={**TINY_READOUT_MODEL, **TRANSFORMER}, training=ADAM, seed=s
                )
                for s in (0, 1)
            ],
            None,
            id="table-rows-ensemble",
        ),
    ],
)
def test_compiled_and_eager_training_agree(
    members: list[ExperimentConfig], zeroed: int | None, tmp_path: Path
) -> None:
    """Also the clamp's own guarantee on the compiled step: the output weights of the head that
    member `zeroed` zero-ablates (1.0) get no gradient, so Adam never moves them."""
    eager, compiled = trained_params(members, "off", tmp_path), trained_params(members, "on", tmp_path)
    initial = Trainer(Run.create(members, tmp_path / "init"), progress=False).state.params
    assert_agree(eager, compiled, initial)
    if zeroed is not None:
        W_O, W_O_before = compiled["blocks.1.attn.W_O"], initial["blocks.1.attn.W_O"]  # (M, H, e, d)
        assert torch.equal(W_O[zeroed, 0], W_O_before[zeroed, 0])
        assert not torch.equal(W_O[zeroed, 1], W_O_before[zeroed, 1])
        assert not torch.equal(W_O[0, 0], W_O_before[0, 0]), "a mean-ablated head still learns"


def test_a_grafted_run_never_compiles_its_step(tmp_path: Path) -> None:
    """A graft's donor runs outside any graph; inside the one-graph compiled step that break turned
    every later compiled step of the process eager (measured: 2.2 -> 12 ms). `on` is refused up
    front, `auto` trains eager however long the run."""
    donor = train(
        tiny_config(training={**SGD, "length": {"steps": 1}}), str(tmp_path / "donor"), progress=False
    )
    graft = {"kind": "graft", "hook": "blocks.0.hook_attn_out", "source": str(donor.path)}
    on = tiny_config(clamps=[graft]).model_dump(by_alias=True)
    on["training"]["compile"] = "on"
    with pytest.raises(ConfigError, match=r"clamps\.0: a graft clamp runs outside any compiled graph"):
        validate_config(on)
    long = {"length": {"steps": AUTO_MEMBER_STEPS}, "compile": "auto"}
    trainer = Trainer(
        Run.create([tiny_config(training=long, clamps=[graft])], tmp_path / "auto"), progress=False
    )
    assert not trainer.compiled
    trainer.train_step()


def test_a_step_that_does_not_compile_as_one_graph_trains_eager_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graph break anywhere in the step (planted here in the loss; a user's model, task or clamp
    kind may have one) fails the step's one-graph trace before anything runs: the run warns, naming
    the break, trains eager from that step on, its manifest says so, and it trains as eager does."""
    config = tiny_config(training=ADAM, model=TRANSFORMER)
    eager = trained_params([config], "off", tmp_path)
    loss = trainer_module.clamped_loss

    def breaking_loss(*args: object) -> torch.Tensor:
        torch._dynamo.graph_break()
        return loss(*args)

    monkeypatch.setattr(trainer_module, "clamped_loss", breaking_loss)
    on = config.model_copy(update={"training": config.training.model_copy(update={"compile": "on"})})
    trainer = Trainer(Run.create([on], tmp_path / "breaks"), progress=False)
    assert trainer.compiled
    with pytest.warns(
        UserWarning, match=r"does not compile as one graph \(.*graph_break.*\); training eager from step 0"
    ):
        for _ in range(STEPS):
            trainer.train_step()
    assert not trainer.compiled and trainer.compile_s is None
    manifest = json.loads((trainer.run.path / "manifest.json").read_text())
    assert manifest["compiled"] is False and "graph_break" in manifest["compile_refused"]
    for name, value in trainer.state.params.items():
        torch.testing.assert_close(value.detach(), eager[name], atol=1e-6, rtol=1e-5)


def assert_agree(eager: dict, compiled: dict, initial: dict) -> None:
    """Compiled parameters within 0.1% of how far eager training moved each parameter (rounding
    differences only; measured up to 0.01% here)."""
    for name in eager:
        moved = (eager[name] - initial[name]).abs().max()  # the largest change of any entry
        assert moved > 0, f"{name} never trained"
        assert (compiled[name] - eager[name]).abs().max() <= 1e-3 * moved, name


def test_a_compiled_run_agrees_with_eager_and_resumes_bit_identically(tmp_path: Path) -> None:
    config = tiny_config(training={**ADAM, "compile": "on", "length": {"steps": 12}}, model=TRANSFORMER)
    run = train(config, str(tmp_path / "whole"), progress=False)
    manifest = json.loads((run.path / "manifest.json").read_text())
    assert manifest["compiled"] is True and manifest["compile_s"] > 0
    off = config.model_copy(update={"training": config.training.model_copy(update={"compile": "off"})})
    eager = train(off, str(tmp_path / "eager"), progress=False)
    params = {name: run.load_checkpoint(step).group("param") for name, step in (("run", 12), ("init", 0))}
    assert_agree(eager.load_checkpoint(12).group("param"), params["run"], params["init"])
    cut = Run.open(killed_copy(run, tmp_path, last_kept=4))
    resumed = resume(cut, progress=False)
    final, again = run.load_checkpoint(12), resumed.load_checkpoint(12)
    for key, value in final.tensors.items():
        assert torch.equal(again.tensors[key], value), key
    how = {"compiled_kernels": True, "cuda_graphs": False, "device": "cpu"}
    on, off = {"compiled": True, **how}, {"compiled": False, **how}
    assert resumed.manifest["segments"] == [{"from_step": 0, **on}, {"from_step": 4, **on}]
    # compile is outside the config hash: a resume may turn it off, and the manifest says from when
    cut = killed_copy(run, tmp_path / "off", last_kept=8)
    edited = yaml.safe_load((cut / "config.yaml").read_text())
    edited["training"]["compile"] = "off"
    (cut / "config.yaml").write_text(yaml.safe_dump(edited))
    resumed = resume(Run.open(cut), progress=False)
    assert resumed.manifest["compiled"] is False
    assert resumed.manifest["segments"] == [
        {"from_step": 0, **on},
        {"from_step": 8, **off, "compiled_kernels": False},
    ]


@pytest.mark.parametrize("mode", ["off", "on"])
def test_a_step_with_a_non_finite_loss_stops_before_it_updates_anything(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compiled step computes its losses and update in one graph, which must leave parameters
    and optimiser state exactly as they were when a loss is not finite (eager stops before the
    update). A loss mask selecting nothing makes the loss 0/0."""
    config = tiny_config(training={**ADAM, "compile": mode}, model=TRANSFORMER)
    trainer = Trainer(Run.create([config], tmp_path), progress=False)
    trainer.train_step()
    before = {k: v.clone() for k, v in trainer.state.params.items()}
    state = {
        (i, k): v.clone() for i, s in enumerate(trainer.state.optimizer.state.values()) for k, v in s.items()
    }
    task = trainer.tasks[0]
    sample = task.training_sample
    nothing = lambda *a: dataclasses.replace(b := sample(*a), loss_mask=torch.zeros_like(b.loss_mask))  # noqa: E731
    monkeypatch.setattr(task, "training_sample", nothing)
    with pytest.raises(DivergenceError, match="non-finite training loss"):
        trainer.train_step()
    assert all(torch.equal(trainer.state.params[k], v) for k, v in before.items())
    after = {(i, k): v for i, s in enumerate(trainer.state.optimizer.state.values()) for k, v in s.items()}
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())


def test_a_compiled_step_compiles_once_and_follows_its_learning_rate_schedule(tmp_path: Path) -> None:
    """Each step of a warm-up and cosine schedule has a new rate: the compiled step takes it as a
    tensor, must never recompile for it (dynamo would fall back to eager after a few recompiles),
    and must train at each step's rate, as eager training does."""
    training = {**ADAM, "schedule": {"name": "cosine", "warmup_steps": 3}}
    config = tiny_config(training=training, model=TRANSFORMER)
    configs = {
        mode: config.model_copy(update={"training": config.training.model_copy(update={"compile": mode})})
        for mode in ("off", "on")
    }
    trainers = {
        mode: Trainer(Run.create([c], tmp_path / mode), progress=False) for mode, c in configs.items()
    }
    initial = {k: v.detach().clone() for k, v in trainers["on"].state.params.items()}
    trainers["on"].train_step()  # compiles (or finds this config's graph compiled by an earlier test)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(7):
            trainers["on"].train_step()
    for _ in range(8):
        trainers["off"].train_step()
    params = {mode: {k: v.detach() for k, v in t.state.params.items()} for mode, t in trainers.items()}
    assert_agree(params["off"], params["on"], initial)


def test_a_one_member_batch_has_the_same_strides_whatever_slice_it_came_from() -> None:
    """RegBench's resampled prompts are slices of buffers whose width varies from batch to batch; a
    compiled step guards on its inputs' strides, and recompiled at every step before
    Batch.stack made the single member's view contiguous."""
    sizes = ["task.n_train_dfas=20", "task.n_val_dfas=2", "task.n_test_dfas=2"]
    config = load_config("icll", [*sizes, "task.prompts=resample"])
    task, g = build_task(config), torch.Generator().manual_seed(0)
    batches = [task.training_sample(8, g, step) for step in range(4)]
    assert len({b.inputs.stride() for b in batches}) > 1, "the slices' strides differ"
    stacked = [Batch.stack([b]) for b in batches]
    assert len({(s.inputs.stride(), s.targets.stride(), s.loss_mask.stride()) for s in stacked}) == 1
    assert all(torch.equal(s.inputs[0], b.inputs) for s, b in zip(stacked, batches, strict=True))


def test_auto_compiles_only_runs_that_repay_compiling() -> None:
    assert not should_compile("auto", AUTO_MEMBER_STEPS - 1, "cpu")
    assert should_compile("auto", AUTO_MEMBER_STEPS, "cpu")
    assert not should_compile("off", 10**9, "cpu") and should_compile("on", 1, "cpu")


def test_compile_settings_give_the_cpu_its_options_a_gpu_the_defaults_and_graphs_their_mode() -> None:
    cpu = compile_settings(torch.device("cpu"), cuda_graphs=False)
    assert cpu == {"options": {"realize_reads_threshold": 1}}
    cpu["options"]["realize_reads_threshold"] = 4  # a copy: the module's setting stays as it was
    assert CPU_INDUCTOR_OPTIONS == {"realize_reads_threshold": 1}
    assert compile_settings(torch.device("cuda"), cuda_graphs=False) == {}
    assert compile_settings(torch.device("cuda"), cuda_graphs=True) == {"mode": "reduce-overhead"}


def test_the_trainer_allows_compiled_kernels_unless_compile_is_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert should_compile("auto", KERNEL_MEMBER_STEPS, "cpu", KERNEL_MEMBER_STEPS)
    assert not should_compile("auto", KERNEL_MEMBER_STEPS - 1, "cpu", KERNEL_MEMBER_STEPS)
    assert should_compile("on", 1, "cpu", KERNEL_MEMBER_STEPS)
    assert not should_compile("off", 10**9, "cpu", KERNEL_MEMBER_STEPS)
    allowed = []  # whether kernels were allowed at each of Mamba's kernel calls (then run torch's code)
    monkeypatch.setattr(native_mamba, "kernels_allowed", lambda: allowed.append(compiled._kernels.get()))
    monkeypatch.setattr(recurrence, "kernel_compiles", lambda elements: False)
    for setting in ("off", "auto"):
        length = {"steps": KERNEL_MEMBER_STEPS}
        config = tiny_config(model=MAMBA, training={"length": length, "compile": setting})
        trainer = Trainer(Run.create([config], tmp_path / setting), progress=False)
        assert not trainer.compiled, "too short to compile the whole step"
        trainer.train_step()
        trainer.evaluate_all()
        assert allowed and set(allowed) == {setting == "auto"}, setting
        allowed.clear()
    dt, A, u, Bs, Cs = (
        torch.ones(1, 8, 2),
        -torch.ones(2, 1),
        torch.ones(1, 8, 2),
        torch.ones(1, 8, 1),
        torch.ones(1, 8, 1),
    )
    selective_scan(dt, A, u, Bs, Cs)
    assert allowed == [False], "outside a trainer models run eager"


def test_compile_setting_reads_yaml_on_off_and_needs_a_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    data = tiny_config().model_dump(mode="json")
    assert (
        validate_config({**data, "training": {**data["training"], "compile": False}}).training.compile
        == "off"
    )
    assert (
        validate_config({**data, "training": {**data["training"], "compile": True}}).training.compile == "on"
    )
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(
        ConfigError,
        match=r"training.compile: on, but torch.compile on the CPU needs a C\+\+ compiler "
        r"\(no-such-compiler not found\)",
    ):
        validate_config({**data, "training": {**data["training"], "compile": "on"}})
    assert not should_compile("auto", 10**9, "cpu"), "auto falls back to eager without a compiler"


def test_cuda_graphs_need_compiling_leave_the_hash_alone_and_do_nothing_on_a_cpu(tmp_path: Path) -> None:
    data = tiny_config().model_dump(mode="json")
    with pytest.raises(
        ConfigError,
        match="training: cuda_graphs needs compile auto or on: the graphs replay the compiled step",
    ):
        validate_config({**data, "training": {**data["training"], "compile": "off", "cuda_graphs": True}})
    graphs = validate_config({**data, "training": {**data["training"], "compile": "on", "cuda_graphs": True}})
    assert graphs.hash() == tiny_config().hash()
    trainer = Trainer(Run.create([graphs], tmp_path), progress=False)
    assert trainer.compiled and not trainer.cuda_graphs


@CUDA
def test_cuda_graphs_train_a_clamped_ensemble_as_the_compiled_step_does(tmp_path: Path) -> None:
    members = [
        tiny_config(training={**ADAM, "device": "cuda"}, model=TRANSFORMER, seed=s, clamps=[c])
        for s, c in enumerate(CLAMPED)
    ]
    initial = Trainer(Run.create(members, tmp_path / "init"), progress=False).state.params
    params, losses = {}, {}
    for graphs in (False, True):
        configs = [
            m.model_copy(
                update={"training": m.training.model_copy(update={"compile": "on", "cuda_graphs": graphs})}
            )
            for m in members
        ]
        trainer = Trainer(Run.create(configs, tmp_path / str(graphs)), progress=False)
        assert trainer.cuda_graphs == graphs
        seen = []
        for _ in range(STEPS):
            trainer.train_step()
            seen.append(trainer.latest_losses)
        losses[graphs] = torch.stack(seen)  # each step's losses, kept across later replays
        params[graphs] = {k: v.detach() for k, v in trainer.state.params.items()}
    assert_agree(params[False], params[True], initial)
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-3, atol=1e-4)


@CUDA
def test_a_run_with_cuda_graphs_resumes_bit_identically_on_cuda(tmp_path: Path) -> None:
    training = {**ADAM, "device": "cuda", "compile": "on", "cuda_graphs": True, "length": {"steps": 12}}
    run = train(tiny_config(training=training, model=TRANSFORMER), str(tmp_path / "whole"), progress=False)
    assert run.manifest["segments"][0]["cuda_graphs"] is True
    resumed = resume(Run.open(killed_copy(run, tmp_path, last_kept=4)), progress=False)
    final, again = run.load_checkpoint(12), resumed.load_checkpoint(12)
    for key, value in final.tensors.items():
        assert torch.equal(again.tensors[key], value), key


def test_an_optimiser_keeps_how_it_steps_when_restored_from_another_kind_of_run() -> None:
    """A GPU run compiled with an unfused Adam saves capturable: True; resumed on the CPU (or eager,
    fused), the optimiser must keep its own flags, or its first step() fails (capturable on a CPU)."""
    from types import SimpleNamespace

    from icl_lab.store.train_state import load_optimizer, optimizer_tensors
    from icl_lab.training.optim import build_optimizer

    cfg = tiny_config(training=ADAM).training.optimizer
    weights = torch.nn.Parameter(torch.randn(4, 3))
    trained = build_optimizer([weights], cfg)
    weights.grad = torch.randn(4, 3)
    trained.step()
    tensors, groups = optimizer_tensors(trained)
    groups = [{**g, "capturable": True, "fused": None} for g in groups]  # as a GPU's compiled run saves
    checkpoint = SimpleNamespace(
        info={"param_groups": groups},
        group=lambda prefix: {k.removeprefix("optim/"): v.clone() for k, v in tensors.items()},
    )
    for fused in (False, True):
        again = build_optimizer([weights], cfg, fused=fused)
        load_optimizer(again, checkpoint, torch.device("cpu"))
        assert again.param_groups[0]["capturable"] is False and again.param_groups[0]["fused"] == (
            fused or None
        )
        assert again.state[weights]["step"].item() == 1.0
        again.step()  # was: "If capturable=True, params and state_steps must be on supported devices"
        assert again.state[weights]["step"].item() == 2.0
