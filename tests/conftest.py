"""Shared fixtures: tiny configs that train in a fraction of a second, and a CLI runner."""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch

from icl_lab.experiment import ExperimentConfig, validate_config

torch.set_num_threads(1)

TINY_BURSTY = {
    "name": "bursty_classification",
    "n_classes": 64,
    "n_labels": 8,
    "dim": 15,
    "n_context": 4,
    "burstiness": 2,
    "n_pos_slots": 13,
    "n_novel_classes": 16,
}
TINY_FEWSHOT = {
    "name": "fewshot_pairs",
    "n_train_classes": 10,
    "n_heldout_classes": 10,
    "feature_dim": 12,
    "n_exemplars": 3,
}
TINY_READOUT_MODEL = {
    "name": "transformer",
    "n_layers": 2,
    "n_heads": 4,
    "d_model": 16,
    "attn_only": True,
    "positional": "rope",
    "readout": {"positions": [-1], "hidden": []},
}


def tiny_config(**sections: Any) -> ExperimentConfig:
    """A 2-layer attention-only model on short repeated-token sequences; sections override."""
    data: dict[str, Any] = {
        "name": "tiny",
        "seed": 3,
        "task": {
            "name": "induction",
            "vocab_size": 16,
            "seq_len": 16,
            "min_prefix": 2,
            "n_copies": None,
        },
        "model": {
            "name": "transformer",
            "n_layers": 2,
            "n_heads": 2,
            "d_model": 16,
            "attn_only": True,
        },
        "training": {"batch_size": 8, "length": {"steps": 12}},
        "eval": {"every": {"steps": 4}, "batch_size": 16},
        "checkpointing": {"every": {"steps": 4}},
    }
    for key, value in sections.items():
        same_kind = isinstance(data.get(key), dict) and data[key].get("name") == value.get(
            "name", data[key].get("name")
        )
        if isinstance(value, dict) and same_kind:
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return validate_config(data)


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> Any:
    """Run the icl-lab entry point in-process: returns (exit code, stdout, stderr)."""
    from icl_lab.cli import main

    def run(*args: str | Path) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["icl-lab", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def render_in_chromium(url: str) -> subprocess.CompletedProcess:
    """Load a page in headless Chromium (no network, 5 s of virtual time); stdout holds the DOM
    after its scripts ran, stderr the console lines (":CONSOLE")."""
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--enable-logging=stderr",
                "--v=0",
                "--virtual-time-budget=5000",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
