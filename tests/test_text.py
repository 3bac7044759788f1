"""Real text offline: corpora split by document, tokenisers that round-trip, cached token streams,
and the text_lm task's windows and diagnostics."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from numpy.lib.stride_tricks import sliding_window_view

from conftest import tiny_config
from icl_lab.analysis.text import greedy_samples
from icl_lab.experiment import build_task
from icl_lab.text.corpus import load_corpus
from icl_lab.text.streams import token_streams
from icl_lab.text.tokenizers import BPETokenizer, ByteTokenizer


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICL_LAB_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def shakespeare():
    return load_corpus("shakespeare")


def test_shakespeare_is_bundled_and_splits_by_play(shakespeare) -> None:
    assert len(shakespeare.documents) == 38 and shakespeare.replaced_bytes == 0
    assert sum(len(d.text) for d in shakespeare.documents) > 5_000_000
    train, test = shakespeare.split(0.1, seed=0)
    assert len(test) == 4 and len(train) == 34
    assert {d.name for d in train}.isdisjoint({d.name for d in test})
    assert {d.name for d in shakespeare.split(0.1, seed=1)[1]} != {d.name for d in test}, "seeded"
    assert [d.name for d in shakespeare.split(0.1, seed=0)[1]] == [d.name for d in test], "reproducible"


def test_the_python_standard_library_is_a_corpus_of_source_files() -> None:
    corpus = load_corpus("python_stdlib", max_documents=30)
    assert len(corpus.documents) == 30 and all(d.name.endswith(".py") for d in corpus.documents)


def test_both_tokenisers_round_trip_real_text(shakespeare) -> None:
    train, test = shakespeare.split(0.1, seed=0)
    text = test[0].text[:20_000]
    byte = ByteTokenizer()
    assert byte.decode(byte.encode_batch([text])[0].tolist()) == text
    bpe = BPETokenizer.train([d.text for d in train[:6]], vocab_size=600)
    ids = bpe.encode_batch([text])[0]
    assert bpe.decode(ids.tolist()) == text
    assert len(ids) < len(text.encode()) / 2, "merges compress the text"
    assert ids.max() < bpe.vocab_size <= 600 and bpe.end_of_document == 0 and 0 not in ids


def test_undecodable_bytes_are_replaced_and_counted(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"fine text\n")
    (tmp_path / "b.txt").write_bytes(b"bad \xff\xfe bytes \xc3")
    corpus = load_corpus(str(tmp_path))
    assert corpus.replaced_bytes == 3
    assert corpus.documents[1].text == "bad \ufffd\ufffd bytes \ufffd"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: None, "no such file or directory"),
        (lambda d: d.mkdir(), "holds no .txt, .md"),
        (lambda d: (d.mkdir(), (d / "only.txt").write_text("one document")), "too few to hold any out"),
        (
            lambda d: (d.mkdir(), (d / "a.txt").write_text(""), (d / "b.txt").write_text("   ")),
            "holds no text",
        ),
    ],
    ids=["missing", "empty directory", "one document", "blank documents"],
)
def test_bad_corpora_are_config_errors(cli, tmp_path: Path, setup, message: str) -> None:
    corpus = tmp_path / "corpus"
    setup(corpus)
    config = tiny_config().model_dump(mode="json", by_alias=True)
    path = tmp_path / "c.yaml"
    config["task"] = {"name": "text_lm", "corpus": str(corpus), "seq_len": 16}
    path.write_text(yaml.safe_dump(config))
    code, _, err = cli("train", path, "--runs-dir", tmp_path / "runs")
    assert code == 2 and err.strip().count("\n") == 0 and message in err, err
    assert not (tmp_path / "runs").exists()


def test_streams_are_cached_and_windows_come_from_their_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(6):  # random letters: a 17-token window identifies its document
        (tmp_path / f"doc{i}.txt").write_text("".join(rng.choice(list("abcdefghij"), 400 + i)))
    first = token_streams(str(tmp_path), "byte", 0, 0.34, seed=0)
    again = token_streams(str(tmp_path), "byte", 0, 0.34, seed=0)
    assert isinstance(again.train, np.memmap) and np.array_equal(first.train, again.train)
    assert first.info["documents"] == {"train": 4, "test": 2}
    assert len(first.test) == sum(400 + int(n[3]) + 1 for n in first.info["test_documents"])
    config = tiny_config(
        task={"name": "text_lm", "corpus": str(tmp_path), "seq_len": 16, "test_fraction": 0.34}
    )
    task = build_task(config)
    for split, stream, other in (("heldout", first.test, first.train), ("train", first.train, first.test)):
        batch = task.eval_splits()[split](32, torch.Generator().manual_seed(0))
        assert batch.inputs.shape == (32, 16) and torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1])
        windows = torch.cat([batch.inputs, batch.targets[:, -1:]], 1).numpy()  # (32, 17)
        for window in windows:
            assert (sliding_window_view(stream, 17) == window).all(1).any(), f"{split} window from its stream"
            assert not (sliding_window_view(other, 17) == window).all(1).any(), "never from the other split"
    repeated = task.eval_splits()["repeated"](8, torch.Generator().manual_seed(0))
    assert (repeated.meta["period"] > 0).all()
    assert set(repeated.inputs.unique().tolist()) <= set(b"abcdefghij"), "tokens the training text holds"


def test_diagnostic_tokens_are_the_common_ones_covering_95_percent() -> None:
    from icl_lab.tasks.text_lm import common_tokens

    # token 9 excluded; the others' counts 50, 30, 15, 4, 1 (of 100): 95% takes the first three
    stream = np.repeat([3, 1, 4, 0, 2, 9], [50, 30, 15, 4, 1, 1000])
    assert common_tokens(stream, exclude=9).tolist() == [1, 3, 4]
    assert common_tokens(stream, exclude=9, coverage=0.96).tolist() == [0, 1, 3, 4]
    assert common_tokens(stream, exclude=9, coverage=1.0).tolist() == [0, 1, 2, 3, 4]


def test_a_text_model_trains_and_its_run_keeps_the_tokeniser(tmp_path: Path) -> None:
    from icl_lab.training.trainer import train

    rng = np.random.default_rng(1)
    for i in range(5):
        (tmp_path / f"doc{i}.txt").write_text(" ".join(rng.choice(["to", "be", "or", "not"], 300)))
    config = tiny_config(
        task={
            "name": "text_lm",
            "corpus": str(tmp_path),
            "seq_len": 16,
            "tokenizer": "bpe",
            "vocab_size": 300,
        },
        training={"length": {"steps": 30}, "optimizer": {"lr": 0.01}},
    )
    run = train(config, str(tmp_path / "runs"), progress=False)
    assert (run.path / "tokenizer.json").is_file() and (run.path / "corpus.json").is_file()
    tokenizer = BPETokenizer.load(run.path / "tokenizer.json")
    assert tokenizer.decode(tokenizer.encode_batch(["to be or not"])[0].tolist()) == "to be or not"
    _, loss = run.curve("loss", "heldout")
    assert loss[-1] < 0.5 * loss[0], "four words in random order: far below the uniform loss"
    assert set(run.metrics["split"].to_pylist()) >= {"heldout", "train", "repeated"}
    from icl_lab.report.page import write_report

    page = write_report(run).read_text()
    assert (run.path / "report" / "loss_by_position.png").stat().st_size > 5_000
    assert "Greedy samples" in page and page.count("[[ ") == 1 + 3, "the title, then three samples"
    info = json.loads((run.path / "corpus.json").read_text())
    assert (
        f"{tmp_path}: 4 training and 1 held-out documents, {info['tokens']['train']:,} and "
        f"{info['tokens']['test']:,} tokens (bpe, vocabulary {info['vocab_size']}); 0 bytes that were "
        "not UTF-8 read as U+FFFD"
    ) in page
    samples = greedy_samples(run, n=2, prompt=8, new=12)
    assert len(samples) == 2 and all(set(c.split()) <= {"to", "be", "or", "not"} for _, c in samples)


def _corpus(where: Path) -> Path:
    rng = np.random.default_rng(2)
    where.mkdir()
    for i in range(5):
        (where / f"doc{i}.txt").write_text(" ".join(rng.choice(["to", "be", "or", "not"], 200)))
    return where


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda d: (d / "train.u16").write_bytes((d / "train.u16").read_bytes()[:1001]), "do not match"),
        (lambda d: (d / "test.u16").write_bytes(b"\xff" * (d / "test.u16").stat().st_size), "do not match"),
        (lambda d: (d / "info.json").write_text("{"), "JSONDecodeError"),
        (lambda d: (d / "tokenizer.json").unlink(), "No such file"),
    ],
)
def test_a_damaged_token_cache_is_refused_naming_it(tmp_path: Path, damage, why: str) -> None:
    from icl_lab.errors import StorageError
    from icl_lab.text.streams import cache_dir

    corpus = str(_corpus(tmp_path / "corpus"))
    token_streams(corpus, "byte", 0, 0.4, seed=0)
    (directory,) = cache_dir().iterdir()
    damage(directory)
    with pytest.raises(StorageError, match=f"the token cache {directory} is damaged .*{why}.*delete it"):
        token_streams(corpus, "byte", 0, 0.4, seed=0)


def test_a_text_run_refuses_to_go_on_after_its_corpus_changed(tmp_path: Path, cli) -> None:
    import os

    from icl_lab.store.run import Run
    from icl_lab.training.trainer import train

    corpus = _corpus(tmp_path / "corpus")
    config = tiny_config(
        task={"name": "text_lm", "corpus": str(corpus), "seq_len": 16, "tokenizer": "bpe", "vocab_size": 300},
        training={"length": {"steps": 8}},
    )
    run = train(config, str(tmp_path / "runs"), progress=False)
    assert set(run.manifest["data"]) == {"0"}
    for doc in corpus.iterdir():  # touched, not changed: the streams are rebuilt alike
        os.utime(doc, ns=(1, 1))
    Run.open(run.path).eval_data()
    with (corpus / "doc1.txt").open("a") as f:  # doc1 trains or is held out: either way, other data
        f.write(" not to be")
    code, _, err = cli("eval", run.path)
    assert code == 2 and err.count("\n") == 1, err
    assert f"run {run.id} was trained on other data than task.corpus {corpus} gives now" in err


def test_a_vocab_size_for_the_byte_tokenizer_is_refused(cli, tmp_path: Path) -> None:
    config = tiny_config().model_dump(mode="json", by_alias=True)
    corpus = str(_corpus(tmp_path / "corpus"))
    config["task"] = {"name": "text_lm", "corpus": corpus, "seq_len": 16, "vocab_size": 5000}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    code, _, err = cli("train", tmp_path / "c.yaml", "--runs-dir", tmp_path / "runs")
    assert code == 2 and err.count("\n") == 1
    assert "vocab_size (5000) sizes a BPE vocabulary; the byte tokenizer's is always 257" in err


def test_a_sweep_does_not_reuse_a_run_whose_corpus_changed(tmp_path: Path) -> None:
    from icl_lab.errors import IclLabError
    from icl_lab.sweeps.execute import run_configs

    corpus = _corpus(tmp_path / "corpus")
    config = tiny_config(
        task={"name": "text_lm", "corpus": str(corpus), "seq_len": 16}, training={"length": {"steps": 4}}
    )
    (run,) = run_configs([config], tmp_path / "runs", workers=1, progress=False)
    assert run_configs([config], tmp_path / "runs", workers=1, progress=False)[0].path == run.path
    with (corpus / "doc2.txt").open("a") as f:
        f.write(" or not")
    with pytest.raises(IclLabError, match=f"RunStoreError: run {run.id} was trained on other data than"):
        run_configs([config], tmp_path / "runs", workers=1, progress=False)


def test_ensemble_members_on_other_corpora_keep_their_own_tokenisers_and_repetition(tmp_path: Path) -> None:
    """Members may differ in corpus (same vocabulary size) and in repetition: the run keeps each
    member's tokeniser where it differs from member 0's, and each member's repetition plan."""
    from icl_lab.training.trainer import train

    def member(corpus: Path, repeat: dict | None) -> object:
        task = {
            "name": "text_lm",
            "corpus": str(corpus),
            "seq_len": 16,
            "tokenizer": "bpe",
            "vocab_size": 300,
        }
        return tiny_config(task={**task, "repeat": repeat}, training={"length": {"steps": 8}})

    first, other = _corpus(tmp_path / "first"), tmp_path / "other"
    other.mkdir()
    for i in range(5):
        (other / f"doc{i}.txt").write_text(" ".join(["one two three four"] * 60 + [str(i)]))
    repeat = {"fraction": 0.5, "epochs": 4}
    run = train([member(first, None), member(first, repeat), member(other, None)], str(tmp_path / "r"), False)
    assert (run.path / "tokenizer.json").is_file() and (
        run.path / "members" / "2" / "tokenizer.json"
    ).is_file()
    assert not (run.path / "members" / "1").exists(), "member 1 reads member 0's data"
    mine = [BPETokenizer.load(p / "tokenizer.json") for p in (run.path, run.path / "members" / "2")]
    first_tokens, other_tokens = (len(t.encode_batch(["one two three four"])[0]) for t in mine)
    assert other_tokens < first_tokens, "member 2's tokeniser learned its own corpus's words"
    plans = run.manifest["repetition"]
    assert plans[0] is None and plans[2] is None and plans[1]["epochs"] == 4
