"""Akyürek et al. (ICML 2024): in-context language learning on RegBench, across architectures.

Every architecture trains on the same random-DFA languages (configs/icll.yaml) with the same
optimiser and budget; the in-context n-gram baselines are scored on the same test prompts, and on
the default generator against the paper's numbers. Quick mode: 2-layer models of width 64 on
128-token prompts for 2,000 steps, about 24 minutes on 2 cores. Full mode: the default generator's
1,024-token prompts, 4 layers of width 128 and 20,000 steps: for a GPU or a cluster.
"""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from icl_lab.analysis.summary import summarise, units_text
from icl_lab.baselines.ngram import ngram_metrics
from icl_lab.experiment import ExperimentConfig, load_config
from icl_lab.metrics.base import EvalContext
from icl_lab.metrics.ngram_heads import ngram_heads
from icl_lab.reproduce.base import REPRODUCTIONS, TOLERANCE, Claim, Reproduction
from icl_lab.seeding import generator
from icl_lab.store.run import Run
from icl_lab.tasks.regbench import RegBenchConfig, RegBenchTask

MIXERS = ("lstm", "gru", "linear_attention", "retention", "gla", "mamba", "s4d")
HYBRID_LAYERS = [{"after": 0, "n": n} for n in (1, 2, 3)]  # the paper's 1-, 2- and 3-gram layers
DEFAULT_WORLD = 0  # seed of the default generator's languages that the baselines are compared on
PAPER_NGRAM = {2: (0.810, 0.344), 3: (0.926, 0.274), 4: (0.941, 0.288)}  # (accuracy, TVD), checked


def architectures(d_model: int, n_layers: int) -> dict[str, dict]:
    """Model sections of every compared architecture, the slowest first (so they start first)."""
    transformer = {
        "name": "transformer",
        "n_layers": n_layers,
        "n_heads": 4,
        "d_model": d_model,
        "norm": "pre",
    }
    mixer = {"name": "mixer_lm", "n_layers": n_layers, "d_model": d_model}
    models = {m: {**mixer, "mixer": m} for m in ("mamba", "gla", "retention", "linear_attention", "s4d")}
    models |= {
        "linear_attention+ngram": {**mixer, "mixer": "linear_attention", "ngram_layers": HYBRID_LAYERS},
        "transformer (RoPE)": {**transformer, "positional": "rope"},
        "transformer (learned)": {**transformer, "positional": "learned"},
        "gru": {**mixer, "mixer": "gru"},
        "lstm+ngram": {**mixer, "mixer": "lstm", "ngram_layers": HYBRID_LAYERS},
        "lstm": {**mixer, "mixer": "lstm"},
    }
    return models


def run_name(architecture: str) -> str:
    return "icll-" + architecture.replace("+", "-").replace(" (", "-").replace(")", "").lower()


def _final(run: Run) -> tuple[float, float]:
    final = summarise(run).final["test"]
    return final["validity_accuracy"], final["tvd"]


class _OneLayer:
    """Stands in for a one-layer model where a metric only asks for n_layers."""

    n_layers = 1


def _uniform_ngram_scores(task: RegBenchTask, tokens: torch.Tensor) -> dict[str, float]:
    """The n-gram head scores of a head attending uniformly to all earlier positions: chance level."""
    T = tokens.shape[1]
    pattern = torch.ones(T, T).tril() / torch.arange(1, T + 1)[:, None]
    batch = task.batch(tokens, torch.zeros_like(tokens), task.tables["test"][: len(tokens)])
    cache = {"blocks.0.attn.hook_pattern": pattern.expand(len(tokens), 1, T, T)}
    scores = ngram_heads(EvalContext(_OneLayer(), task, batch, torch.zeros(0), cache))  # type: ignore[arg-type]
    return {name: value.item() for name, value in scores.items()}


@REPRODUCTIONS.register("icll")
class ICLL(Reproduction):
    """Which architectures learn regular languages in context, against the in-context n-gram models."""

    title = "Akyürek et al. 2024: in-context language learning (RegBench) across architectures"
    quick_budget = "24 minutes on 2 CPU cores (measured)"

    def experiments(self, quick: bool) -> dict[str, ExperimentConfig]:
        if quick:
            size, common = (64, 2), []
        else:
            size, common = (
                (128, 4),
                [
                    "task.n_train_dfas=5000",
                    "task.n_val_dfas=500",
                    "task.n_test_dfas=500",
                    "task.seq_len=1024",
                    "training.batch_size=32",
                    "training.length.steps=20000",
                    "eval.every.steps=1000",
                    "eval.batch_size=500",
                ],
            )
        experiments = {}
        for architecture, model in architectures(*size).items():
            metrics = ["loss", "validity_accuracy", "tvd"]
            if model["name"] == "transformer":
                metrics.append("ngram_heads")
            overrides = [
                *common,
                f"name={run_name(architecture)}",
                f"model={json.dumps(model)}",
                f"eval.metrics={json.dumps(metrics)}",
                "checkpointing.every=null",
            ]
            experiments[architecture] = load_config("icll", overrides)
        return experiments

    def _baselines(self, runs: dict[str, Run]) -> dict[int, tuple[float, float]]:
        """The n-gram models' (accuracy, TVD) on the test prompts every run was scored on."""
        task, batches = next(iter(runs.values())).eval_data()
        batch = batches["test"]
        return {n: tuple(ngram_metrics(task, batch, n).values()) for n in (1, 2, 3, 4)}

    def claims(self, runs: dict[str, Run], quick: bool) -> list[Claim]:
        finals = {name: _final(run) for name, run in runs.items()}
        walls = {name: float(np.max(run.metrics["wall_s"].to_numpy())) for name, run in runs.items()}
        baselines = self._baselines(runs)
        transformers = [name for name in finals if name.startswith("transformer")]
        others = [name for name in finals if name in MIXERS]
        best = max(transformers, key=lambda name: finals[name][0])
        table = "; ".join(
            f"{name} {acc:.2f} / {tvd:.2f} ({walls[name] / 60:.1f} min)"
            for name, (acc, tvd) in finals.items()
        )
        ngram_table = "; ".join(f"{n}-gram {a:.2f} / {t:.2f}" for n, (a, t) in baselines.items())
        claims = [
            Claim(
                "transformers beat recurrent and state-space models at in-context language learning",
                "Transformer best in accuracy and TVD (paper Table 1)",
                f"test accuracy / TVD: {table}; in-context {ngram_table}",
                all(finals[best][0] > finals[o][0] and finals[best][1] < finals[o][1] for o in others),
            )
        ]
        for base in ("lstm", "linear_attention"):
            hybrid = f"{base}+ngram"
            gap = finals[best][0] - finals[base][0]
            gain = finals[hybrid][0] - finals[base][0]
            claims.append(
                Claim(
                    f"hard-wired 1-3-gram layers close much of the gap ({base})",
                    "n-gram layers improve weaker architectures (paper Sec. 6)",
                    f"accuracy {base} {finals[base][0]:.2f}, +ngram {finals[hybrid][0]:.2f}, "
                    f"{best} {finals[best][0]:.2f}",
                    gain > TOLERANCE and gain >= 0.5 * max(gap, 0.0),
                )
            )
        claims.append(self._ngram_head_claim(runs[best], best))
        claims.append(self._baseline_claim())
        return claims

    def _ngram_head_claim(self, run: Run, name: str) -> Claim:
        task, batches = run.eval_data()
        batch = batches["test"]
        chance = _uniform_ngram_scores(task, batch.inputs)
        found = []
        for n in (1, 2, 3):
            _, heads = run.head_curves(f"ngram_head_score_{n}", "test")
            head, value = max(((h, v[-1]) for h, v in heads.items()), key=lambda hv: hv[1])
            found.append((n, head, value, chance[f"ngram_head_score_{n}"]))
        best = max(found, key=lambda f: f[2] / f[3])
        return Claim(
            "trained transformers have n-gram heads (attention to the successors of earlier "
            "occurrences of the current n-gram)",
            "qualitative (paper Fig. 4); we score every head",
            f"{name}, best head per n (score vs uniform attention): "
            + ", ".join(f"n={n}: head {h} {v:.2f} vs {c:.2f}" for n, h, v, c in found),
            best[2] >= 0.5 and best[2] >= 2 * best[3],
        )

    def _baseline_claim(self) -> Claim:
        """The n-gram baselines on the 500 test prompts (one per test DFA) of the default generator,
        against the paper."""
        task = RegBenchTask(RegBenchConfig(), seed=DEFAULT_WORLD)
        batch = task.eval_splits()["test"](500, generator(DEFAULT_WORLD, "icll", "baseline prompts"))
        ours = {n: tuple(ngram_metrics(task, batch, n).values()) for n in PAPER_NGRAM}
        close = all(
            abs(a - pa) <= 0.03 and abs(t - pt) <= 0.03
            for (a, t), (pa, pt) in zip(ours.values(), PAPER_NGRAM.values(), strict=True)
        )
        return Claim(
            "in-context n-gram baselines with back-off on the default generator (accuracy / TVD)",
            ", ".join(f"{n}-gram {a:.3f} / {t:.3f}" for n, (a, t) in PAPER_NGRAM.items()),
            ", ".join(f"{n}-gram {a:.3f} / {t:.3f}" for n, (a, t) in ours.items()),
            close,
        )

    def figures(self, runs: dict[str, Run], out: Path) -> list[Path]:
        finals = {name: _final(run) for name, run in runs.items()}
        finals |= {f"{n}-gram (in context)": v for n, v in self._baselines(runs).items()}
        names = sorted(finals, key=lambda name: -finals[name][0])
        fig, axes = plt.subplots(1, 2, figsize=(11, 0.35 * len(names) + 1.5), sharey=True)
        for ax, index, label in ((axes[0], 0, "validity accuracy"), (axes[1], 1, "TVD (lower is better)")):
            colours = ["tab:grey" if "gram" in n and "+" not in n else "tab:blue" for n in names]
            ax.barh(names, [finals[n][index] for n in names], color=colours)
            ax.set_xlabel(label)
            ax.invert_yaxis()
        run = next(iter(runs.values()))
        fig.suptitle(
            f"RegBench test prompts after {units_text(run, run.checkpoint_steps[-1])} "
            f"(seed {run.config.seed}); grey: in-context n-gram baselines"
        )
        fig.tight_layout()
        path = out / "icll_architectures.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return [path]
