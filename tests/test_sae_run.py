"""SAE training as a run: YAML config, metrics table, checkpoints, exact resume, one-line errors."""

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from conftest import CHROMIUM, render_in_chromium, tiny_config
from icl_lab.sae.config import validate_sae_config
from icl_lab.sae.dashboard import write_dashboard
from icl_lab.sae.run import SAERun, resume_sae, train_sae
from icl_lab.seeding import generator
from icl_lab.store.run import Run
from icl_lab.training.trainer import train
from test_faults import on_cuda, one_line
from test_trainer import CUDA, killed_copy, metrics_without_wall_time


@pytest.fixture(scope="module")
def model_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 2-layer attention-only model (2 heads x d_head 8: hook_z is 16 wide)."""
    runs = tmp_path_factory.mktemp("model")
    return train(tiny_config(), str(runs), progress=False).path


def sae_data(model: Path, **sections: object) -> dict:
    data = {
        "name": "tiny-sae",
        "seed": 1,
        "source": {"run": str(model), "layer": 1},
        "buffer": {"tokens": 2_000, "chunk": 16},
        "sae": {"architecture": "relu_l1", "expansion": 2, "l1_coefficient": 0.01, "resample_every": 15},
        "training": {"steps": 30, "batch_size": 64, "lr": 1e-3, "warmup_steps": 5},
        "eval": {"every": 10, "sequences": 8},
        "checkpointing": {"every": 10},
    }
    return data | sections


def test_an_sae_run_logs_quality_and_splice_metrics_at_every_evaluation(
    model_run: Path, tmp_path: Path
) -> None:
    run = train_sae(validate_sae_config(sae_data(model_run)), tmp_path, progress=False)
    assert run.status == "complete"
    assert run.checkpoint_steps == [0, 10, 20, 30]
    assert run.manifest["d_in"] == 16 and run.manifest["buffer"]["tokens"] == 2_000
    assert run.manifest["buffer"]["bytes"] == 2_000 * 16 * 4
    table = run.metrics
    evals = table.filter(pc.equal(table["split"], "eval"))
    assert sorted(set(evals["step"].to_pylist())) == [0, 10, 20, 30]
    metrics = set(evals["metric"].to_pylist())
    assert metrics >= {"l0", "mse", "explained_variance", "dead_fraction", "ce_recovered", "kl", "ce_zero"}
    train_rows = table.filter(pc.equal(table["split"], "train_batches"))
    assert {"mse", "l1", "l0"} <= set(train_rows["metric"].to_pylist())
    # activations seen = steps x batch
    last = table.filter(pc.equal(table["step"], 30))
    assert set(last["tokens"].to_pylist()) == {30 * 64}
    sae = run.sae()
    assert sae.W_dec.shape == (32, 16)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(32), atol=1e-5)
    # the logged quality is the SAE's on held-out sequences: the config's eval stream, not the buffer
    source, config = run.source(), run.config
    inputs = source.task.sample(config.eval.sequences, generator(config.seed, "sae", "eval")).inputs
    _, cache = source.model.run_with_cache(inputs)
    x = cache["z", 1].flatten(2).flatten(0, 1) * run.scale  # (sequences x positions, d_in)
    logged = {r["metric"]: r["value"] for r in evals.to_pylist() if r["step"] == 30}
    with torch.no_grad():
        features = sae.encode(x)
        error = (sae.decode(features) - x).pow(2).sum(1)  # (N,)
    assert logged["l0"] == pytest.approx(float((features > 0).sum(1).float().mean()), rel=1e-6)
    assert logged["mse"] == pytest.approx(float(error.mean()), rel=1e-4)
    assert logged["explained_variance"] == pytest.approx(
        float(1 - error.sum() / (x - x.mean(0)).pow(2).sum()), rel=1e-4
    )
    first = {r["metric"]: r["value"] for r in evals.to_pylist() if r["step"] == 0}
    assert logged["mse"] < first["mse"], "training lowered the held-out error"


def test_the_training_device_is_outside_the_sae_config_hash(model_run: Path) -> None:
    config = validate_sae_config(sae_data(model_run))
    elsewhere = config.training.model_copy(update={"device": "cuda"})  # unvalidated: no GPU needed
    assert config.model_copy(update={"training": elsewhere}).hash() == config.hash()


def test_sae_configs_hash_as_before_the_cosine_warm_up_unless_they_take_it() -> None:
    data = sae_data(Path("/runs/model"))
    del data["eval"], data["checkpointing"]
    config = validate_sae_config(data)
    assert config.hash() == "5fb1544ac9e83b03", "the hash of 2026-12-05, before warmup_shape"
    cosine = validate_sae_config(data | {"training": data["training"] | {"warmup_shape": "cosine"}})
    assert cosine.hash() != config.hash()


@CUDA
def test_an_sae_trains_on_cuda_and_resumes_there(model_run: Path, tmp_path: Path) -> None:
    data = sae_data(model_run)
    config = validate_sae_config(data | {"training": {**data["training"], "device": "cuda"}})
    reference = train_sae(config, tmp_path / "a", progress=False)
    values = reference.metrics["value"].to_numpy()
    assert reference.status == "complete" and np.isfinite(values).all()
    scores = {r["metric"]: r["value"] for r in reference.metrics.to_pylist() if r["step"] == 30}
    assert 0 < scores["l0"] <= 32  # features firing per input, of 32
    resumed = resume_sae(SAERun.open(killed_copy(reference, tmp_path, last_kept=10)), progress=False)
    a, b = reference.load_checkpoint(30), resumed.load_checkpoint(30)
    assert all(torch.allclose(a.tensors[k].double(), b.tensors[k].double()) for k in a.tensors)


@pytest.mark.parametrize(
    "sae",
    [
        None,  # relu_l1: its resampling at step 15 lies after the cut
        # an encoder made as the decoder's transpose (its strides too): fused Adam resumed with
        # contiguous moments updated it with other elements' moments until they took its strides
        {"architecture": "topk", "expansion": 2, "k": 4},
    ],
)
def test_an_sae_run_resumes_bit_identically(model_run: Path, tmp_path: Path, sae: dict | None) -> None:
    config = validate_sae_config(sae_data(model_run, **({"sae": sae} if sae else {})))
    reference = train_sae(config, tmp_path / "a", progress=False)
    cut_path = killed_copy(reference, tmp_path, last_kept=10)
    manifest = json.loads((cut_path / "manifest.json").read_text())
    (cut_path / "manifest.json").write_text(json.dumps(manifest | {"interrupted_at": 12}))
    cut = SAERun.open(cut_path)
    assert cut.status == "interrupted"
    resumed = resume_sae(cut, progress=False)
    assert resumed.status == "complete" and "interrupted_at" not in resumed.manifest
    a, b = reference.load_checkpoint(30), resumed.load_checkpoint(30)
    assert a.tensors.keys() == b.tensors.keys()
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert metrics_without_wall_time(reference) == metrics_without_wall_time(resumed)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_sae_run_trained_on_a_gpu_opens_here_and_resumes_with_device_cpu(
    model_run: Path, tmp_path: Path, cli
) -> None:
    reference = train_sae(validate_sae_config(sae_data(model_run)), tmp_path / "a", progress=False)
    cut = killed_copy(reference, tmp_path, last_kept=10)
    on_cuda(cut / "config.yaml")
    assert SAERun.open(cut).config.training.device == "cuda"
    code, _, err = cli("sae", "resume", cut, "-q")
    assert code == 2
    one_line(err, f"run {reference.id} cannot train on this machine: training.device: 'cuda' requested but")
    assert SAERun.open(cut).status == "interrupted"
    code, _, err = cli("sae", "resume", cut, "--device", "cpu", "-q")
    assert code == 0, err
    a, b = reference.load_checkpoint(30), SAERun.open(cut).load_checkpoint(30)
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        ({"source": {"layer": 5}}, ["source.layer", "has no hook blocks.5.attn.hook_z", "layers: 0, 1"]),
        ({"sae": {"architecture": "topk", "k": 2, "d_in": 24}}, ["sae.d_in: 24", "2 heads x 8 = 16"]),
        ({"sae": {"architecture": "relu_l2"}}, ["sae", "unknown choice 'relu_l2'"]),
        ({"source": {"run": "nowhere"}}, ["not a run directory", "nowhere"]),
        (
            {"source": {"layer": 1, "task": {"vocab_size": 128}}},
            [
                "source.task: the changed task feeds the model token ids below 128 at 16 positions",
                "on token ids below 16",
            ],
        ),
        ({"source": {"layer": 1, "task": {"seq_len": 32}}}, ["token ids below 16 at 32 positions"]),
        ({"training": {"steps": 30, "device": "cuda:7"}}, ["training.device", "'cuda:7' requested but"]),
        ({"buffer": {"tokens": 10}}, ["buffer.tokens (10) is fewer than training.batch_size (64)"]),
        ({"training": {"steps": 30, "betas": [0.9, 2]}}, ["training.betas.1: Input should be less than 1"]),
        (
            {"sae": {"architecture": "topk", "k": 32, "expansion": 2}},
            ["sae.k: 32 keeps all 32 features (expansion 2 x d_in 16): no sparsity"],
        ),
    ],
)
def test_bad_sae_configs_exit_2_with_one_line_and_write_nothing(
    model_run: Path, tmp_path: Path, cli, change: dict, needles: list[str]
) -> None:
    data = sae_data(model_run)
    for key, value in change.items():
        data[key] = {**data[key], **value} if key == "source" else value
    path = tmp_path / "sae.yaml"
    path.write_text(yaml.safe_dump(data))
    code, _, err = cli("sae", "train", path, "--runs-dir", tmp_path / "runs", "-q")
    assert code == 2
    one_line(err, *needles)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_an_sae_of_a_model_that_is_not_a_language_model_exits_2_and_writes_nothing(
    tmp_path: Path, cli
) -> None:
    from icl_lab.experiment import load_config

    short = ["training.length.steps=2", "eval.batch_size=8", "checkpointing.every.steps=2"]
    reddy = train(load_config("reddy_fast", short), str(tmp_path / "model"), progress=False)
    path = tmp_path / "sae.yaml"
    path.write_text(yaml.safe_dump(sae_data(reddy.path)))
    code, _, err = cli("sae", "train", path, "--runs-dir", tmp_path / "runs", "-q")
    assert code == 2
    one_line(
        err,
        f"source.run: the model of run {reddy.id} is not a language model (vectors of width 128 at 17 "
        "positions, 32 outputs at positions [-1]); an SAE is scored by the next-token loss it recovers",
    )
    assert not (tmp_path / "runs").exists()


def test_an_sae_run_that_fails_before_training_is_marked_failed_not_left_running(
    model_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import icl_lab.sae.run as sae_run_module

    def no_memory(*args: object, **kwargs: object) -> None:
        raise MemoryError("the activation buffer does not fit")

    monkeypatch.setattr(sae_run_module, "fill_buffer", no_memory)
    with pytest.raises(MemoryError):
        train_sae(validate_sae_config(sae_data(model_run)), tmp_path / "runs", progress=False)
    (run_dir,) = (tmp_path / "runs").iterdir()
    run = SAERun.open(run_dir)
    assert run.status == "failed"
    assert run.manifest["error"] == "MemoryError: the activation buffer does not fit"


def test_an_sae_keeps_reading_the_checkpoint_it_was_trained_on_when_its_model_trains_on(
    model_run: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "model"
    shutil.copytree(model_run, copy)
    later = {p: p.read_bytes() for p in (copy / "checkpoints").glob("step_000000012.*")}
    for path in later:  # the model run as it was at step 8, before it trained on
        path.unlink()
    run = train_sae(validate_sae_config(sae_data(copy)), tmp_path / "runs", progress=False)
    for path, data in later.items():
        path.write_bytes(data)
    assert run.manifest["source_step"] == 8 and Run.open(copy).checkpoint_steps[-1] == 12
    assert SAERun.open(run.path).source().step == 8
    assert "(step 8, member 0)" in write_dashboard(SAERun.open(run.path), sequences=4).read_text()


def test_an_sae_on_an_unfinished_model_run_says_so_and_its_divergence_names_the_source(
    model_run: Path, tmp_path: Path, cli
) -> None:
    cut = killed_copy(Run.open(model_run), tmp_path, last_kept=8)
    manifest = json.loads((cut / "manifest.json").read_text())
    (cut / "manifest.json").write_text(json.dumps(manifest | {"interrupted_at": 9}))
    path = tmp_path / "sae.yaml"
    path.write_text(yaml.safe_dump(sae_data(cut)))
    unfinished = f"step 8 of run {cut.name}, which is interrupted at step 9"
    train = ("sae", "train", path, "--runs-dir", tmp_path / "runs", "-q", "--set")
    code, out, err = cli(*train, "training.steps=5")
    assert code == 0, err
    assert f"note: the SAE reads {unfinished}" in out
    code, out, err = cli(*train, "training.lr=1e38")
    assert code == 2
    one_line(err, "diverged at step", f"non-finite loss (its source is {unfinished})")


def test_sae_cli_trains_resumes_and_exports(
    model_run: Path, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sae.yaml"
    monkeypatch.chdir(model_run.parent)  # the model run named relative to where the SAE is trained
    path.write_text(yaml.safe_dump(sae_data(Path(model_run.name))))
    code, out, err = cli(
        "sae", "train", path, "--runs-dir", tmp_path / "runs", "-q", "--set", "training.steps=20"
    )
    assert code == 0, err
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert SAERun.open(run_dir).config.source.run == str(model_run.resolve()), "stored absolute"
    monkeypatch.chdir(tmp_path)  # and found from elsewhere
    code, out, _ = cli("sae", "resume", run_dir)
    assert code == 0 and "already complete" in out
    code, out, err = cli("sae", "export", run_dir, tmp_path / "exported")
    assert code == 0, err
    assert {p.name for p in (tmp_path / "exported").iterdir()} == {"cfg.json", "sae_weights.safetensors"}
    step = Run.open(model_run).checkpoint_steps[-1]  # the latest: the SAE's source names none
    source = json.loads((tmp_path / "exported" / "cfg.json").read_text())["metadata"]["icl_lab_source"]
    assert source == {"run": str(model_run.resolve()), "step": step, "member": 0}
    pair = f"icl-lab export {model_run.resolve()} TL_OUT --checkpoint {step}"
    assert f"the TransformerLens model it matches: {pair}" in " ".join(out.split())


@pytest.fixture(scope="module")
def sae_run(model_run: Path, tmp_path_factory: pytest.TempPathFactory) -> SAERun:
    """At a learning rate where some decoder rows leave their initialisation and some do not."""
    training = {"steps": 30, "batch_size": 64, "lr": 3e-2, "warmup_steps": 5}
    config = validate_sae_config(sae_data(model_run, training=training))
    return train_sae(config, tmp_path_factory.mktemp("sae"), progress=False)


def test_dashboard_lists_every_feature_and_shades_contexts_by_dfa(sae_run: SAERun, cli) -> None:
    code, _, err = cli("sae", "dashboard", sae_run.path, "--sequences", "6", "--features", "0,3,7")
    assert code == 0, err
    text = (sae_run.path / "dashboard" / "index.html").read_text()
    assert text.count("<tr data-text=") == 32, "a row per feature"
    assert all(f'id="f{f}"' in text for f in (0, 3, 7)) and 'id="f1"' not in text
    assert text.count('src="data:image/png;base64,') == 2
    assert re.search(r'class="dest" style="background:rgba\(', text), "the destination token is boxed"
    assert re.search(r'title="position \d+: DFA -?[\d.e+-]+"', text)
    assert "seed</th><td>1" in text and "held-out sequences" in text
    code, _, err = cli("sae", "dashboard", sae_run.path, "--features", "99")
    assert code == 2 and "no feature 99 (the SAE has 32)" in err
    code, _, err = cli("sae", "dashboard", sae_run.path, "--features", "")
    assert code == 2 and "--features: give comma-separated integers (got '')" in err


def test_dashboard_names_a_top_head_only_for_decoder_rows_that_left_their_initialisation(
    sae_run: SAERun,
) -> None:

    before, after = sae_run.load_checkpoint(0).tensors["param/W_dec"], sae_run.sae().W_dec.detach()
    cosine = (before * after).sum(1) / (before.norm(dim=1) * after.norm(dim=1))
    still, moved = int(cosine.argmax()), int(cosine.argmin())
    text = write_dashboard(sae_run, sequences=6, features=[still, moved]).read_text()
    cards = dict(re.findall(r'<section class="card" id="f(\d+)">(.*?)</section>', text))
    assert "chance: the row's cosine to its random initialisation is" in cards[str(still)]
    assert "chance" not in cards[str(moved)]
    feature = r'<td>(?:<a href="#f\d+">)?(\d+)(?:</a>)?</td>'
    rows = re.findall(
        rf"<tr data-text=[^>]*>{feature}(?:<td>[^<]*</td>){{2}}<td>([^<]*)</td><td>([^<]*)</td>", text
    )
    assert len(rows) == 32
    trained = 0
    for f, head, shown in rows:
        assert float(shown) == pytest.approx(float(cosine[int(f)]), abs=0.006)
        if cosine[int(f)] < 0.9:
            trained += 1
            assert re.fullmatch(r"1\.[01] \(\d+%\)", head), head
        else:
            assert head == "untrained row"
    assert 0 < trained < 32, "the fixture must have rows of both kinds"
    assert f"{trained} of 32 (cosine to their initialisation &lt; 0.9" in text


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (CI installs Debian's chromium)")
def test_dashboard_renders_in_chromium_and_its_search_filters_the_list(sae_run: SAERun) -> None:
    from icl_lab.sae.dashboard import write_dashboard

    page = write_dashboard(sae_run, sequences=6, cards=4)
    text = page.read_text()
    expected = len(re.findall(r'<tr data-text="[^"]*short-range', text))
    assert 0 < expected < 32, "the search must have something to hide"
    done = render_in_chromium(page.as_uri() + "?q=short-range")
    assert 'data-figures="2/2"' in done.stdout
    assert f'<span id="shown">{expected}</span>' in done.stdout
    assert done.stdout.count(' hidden=""') == 32 - expected
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console


def test_an_sae_config_naming_an_earlier_run_waits_for_it_in_the_pool(tmp_path: Path) -> None:
    from icl_lab.sweeps.execute import run_configs

    model = tiny_config(name="source-model")
    sae = validate_sae_config(sae_data(Path("source-model"), training={"steps": 5, "batch_size": 32}))
    model_run, sae_run = run_configs([model, sae], tmp_path, workers=2, progress=False)
    assert sae_run.status == "complete" and sae_run.config.source.run == str(model_run.path)
    assert model_run.status == "complete"
    relative = os.path.relpath(tmp_path)  # the same directory, named otherwise: the run is kept
    again = run_configs([model, sae], relative, workers=1, progress=False)
    assert again[1].status == "complete" and again[1].config.source.run == str(model_run.path)


def test_an_sae_config_reads_its_source_member_of_a_packed_ensemble(tmp_path: Path) -> None:
    from icl_lab.sweeps.execute import run_configs

    models = [tiny_config(name="first"), tiny_config(name="second", seed=8)]
    sae = validate_sae_config(sae_data(Path("second"), training={"steps": 5, "batch_size": 32}))
    first, second, sae_run = run_configs(
        [*models, sae], tmp_path, workers=2, progress=False, ensemble="always"
    )
    assert first.path == second.path == tmp_path / "000-first-x2"
    assert (sae_run.config.source.run, sae_run.config.source.member) == (str(second.path), 1)
    assert sae_run.status == "complete"


def test_a_job_after_a_failed_one_fails_without_running(tmp_path: Path) -> None:
    from icl_lab.sweeps.execute import Job, Schedule

    plan = (("a", ()), ("b", (0,)), ("c", ()))
    jobs = [Job(tmp_path / name, (tiny_config(),), after) for name, after in plan]
    schedule = Schedule(jobs, [0, 1, 2])
    assert schedule.take() == (0, None)
    assert schedule.take() == (2, None), "b waits for a; c need not"
    assert schedule.take() is None
    schedule.done(0, "failed")
    assert schedule.take() == (1, ("failed", "it needs a, which did not complete"))


def test_list_runs_shows_sae_runs_beside_model_runs(sae_run: SAERun, cli) -> None:
    import shutil

    together = sae_run.path.parent.parent / "together"
    shutil.copytree(sae_run.path, together / sae_run.id)
    shutil.copytree(Path(sae_run.config.source.run), together / "model")
    code, out, err = cli("list", "runs", "--runs-dir", together)
    assert code == 0, err
    rows = [line for line in out.splitlines() if "complete" in line]
    assert len(rows) == 2 and any("SAE" in r for r in rows) and any("model" in r for r in rows)


def test_an_interrupted_sae_run_says_how_to_continue_it(
    model_run: Path, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    from icl_lab.errors import Interrupted
    from icl_lab.sae.run import SAETrainer

    def stopped(self: SAETrainer) -> None:
        raise Interrupted("SIGINT")

    monkeypatch.setattr(SAETrainer, "train_step", stopped)
    path = tmp_path / "sae.yaml"
    path.write_text(yaml.safe_dump(sae_data(model_run)))
    code, _, err = cli("sae", "train", path, "--runs-dir", tmp_path / "runs", "-q")
    (run,) = (tmp_path / "runs").iterdir()
    assert code == 130 and err.strip() == f"interrupted (SIGINT); continue with: icl-lab sae resume {run}"
    assert SAERun.open(run).status == "interrupted"


@pytest.mark.parametrize("gone", ["json", "safetensors", "an evaluation", "a row"])
def test_a_complete_sae_run_missing_its_final_checkpoint_or_an_evaluation_is_refused(
    sae_run: SAERun, tmp_path: Path, cli, gone: str
) -> None:
    """Not its step-20 SAE exported or shown as if it were the finished one, nor curves with holes."""
    damaged = Path(shutil.copytree(sae_run.path, tmp_path / sae_run.id))
    expected = f"run {sae_run.id} is marked complete, but its final checkpoint (step 30) is gone"
    if gone == "an evaluation":
        table = pq.read_table(damaged / "metrics.parquet")
        step = sorted(set(table["step"].to_pylist()))[1]
        pq.write_table(table.filter(pc.not_equal(table["step"], step)), damaged / "metrics.parquet")
        expected = (
            f"run {sae_run.id} is marked complete, but member 0's metrics lack its evaluations at steps "
            f"{step}: its metrics.parquet is damaged"
        )
    elif gone == "a row":  # every evaluation keeps some of its rows
        table = pq.read_table(damaged / "metrics.parquet")
        assert table.num_rows == sae_run.manifest["metrics_rows"]
        pq.write_table(table.slice(0, table.num_rows - 1), damaged / "metrics.parquet")
        expected = (
            f"run {sae_run.id} is marked complete, but its metrics.parquet has {table.num_rows - 1:,} rows "
            f"where training wrote {table.num_rows:,}: it is damaged"
        )
    else:
        (damaged / "checkpoints" / f"step_000000030.{gone}").unlink()
    for command in (("export", damaged, tmp_path / "out"), ("resume", damaged), ("dashboard", damaged)):
        code, _, err = cli("sae", *command)
        assert code == 2
        one_line(err, expected)
    assert not (tmp_path / "out").exists()
    code, out, _ = cli("list", "runs", "--runs-dir", tmp_path)
    assert code == 0 and "damaged (below)" in out and expected in " ".join(out.split())


def test_an_sae_whose_model_run_was_replaced_by_another_is_refused(tmp_path: Path, cli) -> None:
    """Another run at the SAE's source path (here another seed's): the dashboard would score the SAE
    on the wrong model's activations, silently, and export would name that model as its match."""
    model = train(tiny_config(), str(tmp_path / "model"), progress=False).path
    sae = train_sae(validate_sae_config(sae_data(model)), tmp_path / "sae", progress=False)
    shutil.rmtree(model)
    other = train(tiny_config(seed=1), str(tmp_path / "other"), progress=False)
    shutil.copytree(other.path, model)
    changed = (
        f"the model run at {model} is not the one SAE run {sae.id} was trained on (its config hash is "
        f"{other.config_hash[:12]}, the SAE's source had {sae.manifest['source_hash'][:12]})"
    )
    code, _, err = cli("sae", "dashboard", sae.path)
    assert code == 2
    one_line(err, changed)
    code, out, err = cli("sae", "export", sae.path, tmp_path / "out")
    assert code == 0, err
    assert f"{changed}, so no TransformerLens model matches it" in " ".join(out.split())


def test_sae_export_and_dashboard_of_an_sae_whose_model_run_is_gone_say_so(tmp_path: Path, cli) -> None:
    model = train(tiny_config(), str(tmp_path / "model"), progress=False).path
    sae = train_sae(validate_sae_config(sae_data(model)), tmp_path / "sae", progress=False)
    shutil.rmtree(model)
    code, out, err = cli("sae", "export", sae.path, tmp_path / "out")
    assert code == 0, err
    said = " ".join(out.split())
    assert f"that model run is gone ({model}), so no TransformerLens model matches it" in said
    code, _, err = cli("sae", "dashboard", sae.path)
    assert code == 2
    one_line(err, f"the model run SAE run {sae.id} reads, {model}, is gone (moved or deleted)")
