"""Akyürek et al. (ICML 2024): in-context language learning on RegBench, across architectures.

Every architecture trains on the same random-DFA languages (configs/icll.yaml) with the same
optimiser and budget, on seeds 0, 1 and 2 (each seed draws its own languages, prompts and
initialisation); the in-context n-gram baselines are scored on the same test prompts, and, in each
seed's languages, on the default generator against the paper's numbers. Each claim is judged on
each seed and holds when it holds for most. Every model is built as the authors' code builds it
(`architectures`). Quick mode: models of width 64 (2 blocks, 1 where theirs has one) on 128-token
prompts for 2,000 steps, about 45 minutes on 2 cores (measured 2026-12-05, alone).
Full mode: the default generator's 1,024-token prompts, each architecture at the authors' size
(AUTHORS_SIZES) and 20,000 steps: for a GPU or a cluster.
"""

import json
from dataclasses import replace
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
from icl_lab.report.html import save_png
from icl_lab.reproduce.base import REPRODUCTIONS, TOLERANCE, Claim, Reproduction, judged_by_seed, mean_sd
from icl_lab.seeding import generator
from icl_lab.store.run import Run
from icl_lab.tasks.regbench import RegBenchConfig, RegBenchTask

MIXERS = ("lstm", "gru", "linear_attention", "retention", "gla", "mamba", "s4d")
# 1-, 2- and 3-gram layers, as the authors' RetNet hybrid (berlino/seq_icl, branch bret; their GLA
# hybrid there takes 1, 2 and 4)
HYBRID_LAYERS = [{"after": 0, "n": n} for n in (1, 2, 3)]
BASELINE_PROMPTS = 500  # the default generator's test DFAs, one prompt each
PAPER_NGRAM = {2: (0.810, 0.344), 3: (0.926, 0.274), 4: (0.941, 0.288)}  # (accuracy, TVD), checked


# Each architecture's size in the authors' configs (berlino/seq_icl configs/experiment/dfa/*.yaml at
# 9b9223d: n_layer, d_model, attention heads; the sizes behind the paper's Table 1, picked by sweeps,
# are not in the repository), used in full mode; quick mode gives every architecture width 64 and 4
# heads, and 2 blocks but where theirs has one.
AUTHORS_SIZES = {
    "transformer (learned)": {"n_layers": 8, "d_model": 128, "n_heads": 2},  # transformer.yaml
    "transformer (RoPE)": {
        "n_layers": 2,
        "d_model": 128,
        "n_heads": 8,
    },  # transformer+.yaml, layer/mha-rope.yaml
    "linear_attention": {"n_layers": 8, "d_model": 128, "n_heads": 2},  # linear_transformer.yaml
    "retention": {"n_layers": 2, "d_model": 32, "n_heads": 8},  # retnet.yaml
    "gla": {"n_layers": 4, "d_model": 128, "n_heads": 1},  # gla.yaml
    "s4d": {"n_layers": 2, "d_model": 128},  # s4d.yaml
    # lm_simple_noffn (mamba.yaml: 4 layers, lstm.yaml: 2) feeds every layer the embeddings and the
    # last one's output to the head (simple_lm.py l.589-590): one layer computes the logits
    "mamba": {"n_layers": 1, "d_model": 128},
    "lstm": {"n_layers": 1, "d_model": 32},
    "gru": {"n_layers": 1, "d_model": 32},  # none of theirs: the LSTM's
}
QUICK_SIZE = {"n_layers": 2, "d_model": 64, "n_heads": 4}


def architectures(quick: bool) -> dict[str, dict]:
    """Model sections of every compared architecture, in the order of the claims' table; a hybrid
    has its base's size."""
    sizes = AUTHORS_SIZES
    if quick:  # one size for all, but one block where theirs has one
        sizes = {a: {**QUICK_SIZE, "n_layers": min(s["n_layers"], 2)} for a, s in AUTHORS_SIZES.items()}
    # every architecture as the authors' code builds it (src/models/sequence/simple_lm.py): lm_simple
    # for the transformers, linear transformer, RetNet, GLA and S4D: pre-norm blocks with MLPs, dropout
    # 0.1 on the embeddings (experiment/dfa/*.yaml), GPT-2's init (_init_weights l.415-444) and the
    # unembedding tied to the token embedding (l.537-538); and lm_simple_noffn for Mamba and LSTM: the
    # mixer alone on the embeddings (PyTorch's N(0, 1), no _init_weights), no norms, residuals or MLP,
    # tied, and no dropout (its dropped embeddings are not used, l.583-590); the MLPs' GELU is tanh's
    # approximation (Mlp, l.388)
    tied = {"name": "mixer_lm", "tie_unembed": True}
    mixer = {**tied, "embed_dropout": 0.1, "init": "gpt2", "act_fn": "gelu_new"}
    bare = {**tied, "layout": "bare", "mlp": False, "embed_std": 1.0}
    recurrent = {**bare, "recurrent_init": "keras"}  # their LSTMLayer's _reinitialize (rnn/lstm.py)
    transformer = {
        "name": "transformer",
        "norm": "pre",
        "embed_dropout": 0.1,
        "init": "gpt2",
        "tie_unembed": True,
        "act_fn": "gelu_new",
    }
    models = {"mamba": {**bare, "mixer": "mamba", **sizes["mamba"]}}
    models |= {m: {**mixer, "mixer": m, **sizes[m]} for m in ("gla", "retention", "linear_attention")}
    models["retention"] |= {"retnet": True}  # RetNet's MultiScaleRetention (rnn/retention.py)
    # Yang et al.'s GatedLinearAttention (rnn/gla.py) in its chunks of 16 (attn_chunk_size), where the
    # log-decays' clamp at -3 is theirs, not the recurrence's at -80 / chunk
    models["gla"] |= {"gla_yang": True, "chunk": 16}
    # S4D-Inv with 32 complex modes, its own init (ssm/s4d.py) and no weight decay on its step sizes and
    # modes (l.127-131, train.py configure_optimizers); configs/model/layer/s4d.yaml
    models["s4d"] = {**mixer, "mixer": "s4d", "d_state": 64, "s4d_init": "inv", **sizes["s4d"]}
    # their linear transformer: the transformer's attention with raw scaled scores, no feature map or
    # normalisation, dropout 0.1 on those scores, biases on its maps (MHA l.106, l.146), learned
    # positions (simple_lm.py SelfAttention, linear_transformer.yaml)
    models["linear_attention"] |= {
        "feature_map": "none",
        "positional": "learned",
        "mixer_bias": True,
        "attn_dropout": 0.1,
    }
    models |= {
        "linear_attention+ngram": {**models["linear_attention"], "ngram_layers": HYBRID_LAYERS},
        # their RoPE transformer's attention has no dropout (layer/mha-rope.yaml)
        "transformer (RoPE)": {**transformer, "positional": "rope", **sizes["transformer (RoPE)"]},
        "transformer (learned)": {
            **transformer,
            "positional": "learned",
            "attn_dropout": 0.1,
            **sizes["transformer (learned)"],
        },
        "gru": {**recurrent, "mixer": "gru", **sizes["gru"]},
        "lstm+ngram": {**recurrent, "mixer": "lstm", "ngram_layers": HYBRID_LAYERS, **sizes["lstm"]},
        "lstm": {**recurrent, "mixer": "lstm", **sizes["lstm"]},
    }
    return models


SEEDS = (0, 1, 2)


def run_name(architecture: str, seed: int) -> str:
    return "icll-" + architecture.replace("+", "-").replace(" (", "-").replace(")", "").lower() + f"-s{seed}"


def _by_seed(runs: dict[str, Run]) -> dict[int, dict[str, Run]]:
    """{seed: {architecture: run}} from runs keyed 'ARCHITECTURE sSEED'."""
    grouped: dict[int, dict[str, Run]] = {}
    for key, run in runs.items():
        grouped.setdefault(run.config.seed, {})[key.rsplit(" s", 1)[0]] = run
    return dict(sorted(grouped.items()))


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
    full_scale = "each architecture at the authors' size, 20,000 steps on 1,024-token prompts"
    quick_budget = "45 minutes on 2 CPU cores (measured 2026-12-05, alone)"
    seeds = SEEDS

    def experiments(self, quick: bool) -> dict[str, ExperimentConfig]:
        common = (
            []
            if quick
            else [
                "task.n_train_dfas=5000",
                "task.n_val_dfas=500",
                "task.n_test_dfas=500",
                "task.seq_len=1024",
                "training.batch_size=32",
                "training.length.steps=20000",
                "training.schedule.warmup_steps=2000",  # a tenth of training, as the authors'
                "eval.every.steps=1000",
                "eval.batch_size=500",
            ]
        )
        experiments = {}
        for architecture, model in architectures(quick).items():  # the slowest first, on every seed
            metrics = ["loss", "validity_accuracy", "tvd"]
            if model["name"] == "transformer":
                metrics.append("ngram_heads")
            for seed in self.seeds:
                overrides = [
                    *common,
                    f"name={run_name(architecture, seed)}",
                    f"seed={seed}",
                    f"model={json.dumps(model)}",
                    f"eval.metrics={json.dumps(metrics)}",
                    "checkpointing.every=null",
                ]
                experiments[f"{architecture} s{seed}"] = load_config("icll", overrides)
        return experiments

    def _baselines(self, runs: dict[str, Run]) -> dict[int, tuple[float, float]]:
        """The n-gram models' (accuracy, TVD) on the test prompts every run of one seed was scored on."""
        task, batches = next(iter(runs.values())).eval_data()
        batch = batches["test"]
        return {n: tuple(ngram_metrics(task, batch, n).values()) for n in (1, 2, 3, 4)}

    def _finals(self, runs: dict[str, Run]) -> dict[int, dict[str, tuple[float, float]]]:
        """{seed: {architecture, or in-context n-gram baseline: final (accuracy, TVD) on that seed's
        test prompts}}."""
        return {
            seed: {a: _final(run) for a, run in arch.items()}
            | {f"{n}-gram (in context)": v for n, v in self._baselines(arch).items()}
            for seed, arch in _by_seed(runs).items()
        }

    def claims(self, runs: dict[str, Run], quick: bool) -> list[Claim]:
        seeds, finals = _by_seed(runs), self._finals(runs)
        walls = {
            a: np.mean([float(np.max(arch[a].metrics["wall_s"].to_numpy())) for arch in seeds.values()])
            for a in next(iter(seeds.values()))
        }
        table = "; ".join(
            f"{name} {mean_sd([f[name][0] for f in finals.values()])} / "
            f"{mean_sd([f[name][1] for f in finals.values()])}"
            + (f" ({walls[name] / 60:.1f} min)" if name in walls else "")
            for name in next(iter(finals.values()))
        )
        judged = {"beat": [], "lstm": [], "linear_attention": [], "heads": []}
        for seed, arch in seeds.items():
            final = finals[seed]
            best = max((n for n in final if n.startswith("transformer")), key=lambda n: final[n][0])
            rival = max((n for n in final if n in MIXERS), key=lambda n: final[n][0])
            beaten = all(final[best][0] > final[o][0] and final[best][1] < final[o][1] for o in MIXERS)
            judged["beat"].append(
                (
                    seed,
                    beaten,
                    f"seed {seed}: {best} {final[best][0]:.2f} / {final[best][1]:.2f}, "
                    f"best other {rival} {final[rival][0]:.2f} / {final[rival][1]:.2f}",
                )
            )
            for base in ("lstm", "linear_attention"):
                hybrid = f"{base}+ngram"
                gap, gain = final[best][0] - final[base][0], final[hybrid][0] - final[base][0]
                judged[base].append(
                    (
                        seed,
                        gain > TOLERANCE and gain >= 0.5 * max(gap, 0.0),
                        f"seed {seed}: {base} {final[base][0]:.2f}, +ngram {final[hybrid][0]:.2f}, "
                        f"{best} {final[best][0]:.2f}",
                    )
                )
            judged["heads"].append(self._ngram_heads(arch[best], best, seed))
        beat = judged_by_seed(
            "transformers beat recurrent and state-space models at in-context language learning",
            "Transformer best in accuracy and TVD (paper Table 1)",
            judged["beat"],
        )
        claims = [replace(beat, ours=f"test accuracy / TVD (mean±sd over seeds): {table}; {beat.ours}")]
        for base in ("lstm", "linear_attention"):
            claims.append(
                judged_by_seed(
                    f"hard-wired 1-3-gram layers close much of the gap ({base})",
                    "n-gram layers improve weaker architectures (paper Sec. 6)",
                    judged[base],
                    what="the gain is at least half the gap",
                )
            )
        claims.append(
            judged_by_seed(
                "trained transformers have n-gram heads (attention to the successors of earlier "
                "occurrences of the current n-gram)",
                "qualitative (paper Fig. 4); we score every head",
                judged["heads"],
            )
        )
        claims.append(self._baseline_claim())
        return claims

    def _ngram_heads(self, run: Run, name: str, seed: int) -> tuple[int, bool, str]:
        """(seed, whether some head scores at least 0.5 and twice uniform attention, the best head
        per n) on the best transformer of one seed."""
        task, batches = run.eval_data()
        batch = batches["test"]
        chance = _uniform_ngram_scores(task, batch.inputs)
        found = []
        for n in (1, 2, 3):
            _, heads = run.head_curves(f"ngram_head_score_{n}", "test")
            head, value = max(((h, v[-1]) for h, v in heads.items()), key=lambda hv: hv[1])
            found.append((n, head, value, chance[f"ngram_head_score_{n}"]))
        text = f"seed {seed}: {name}, best head per n (score vs uniform attention): " + ", ".join(
            f"n={n}: head {h} {v:.2f} vs {c:.2f}" for n, h, v, c in found
        )
        return seed, any(v >= 0.5 and v >= 2 * c for _, _, v, c in found), text

    def _baseline_claim(self) -> Claim:
        """The n-gram baselines on the default generator's test prompts (one per test DFA), in each
        seed's languages, against the paper."""
        judged = []
        for seed in self.seeds:
            task = RegBenchTask(RegBenchConfig(), seed=seed)
            prompts = generator(seed, "icll", "baseline prompts")
            batch = task.eval_splits()["test"](BASELINE_PROMPTS, prompts)
            ours = {n: tuple(ngram_metrics(task, batch, n).values()) for n in PAPER_NGRAM}
            close = all(
                abs(a - pa) <= 0.03 and abs(t - pt) <= 0.03
                for (a, t), (pa, pt) in zip(ours.values(), PAPER_NGRAM.values(), strict=True)
            )
            text = ", ".join(f"{n}-gram {a:.3f} / {t:.3f}" for n, (a, t) in ours.items())
            judged.append((seed, close, f"seed {seed}: {text}"))
        return judged_by_seed(
            "in-context n-gram baselines with back-off on the default generator (accuracy / TVD)",
            ", ".join(f"{n}-gram {a:.3f} / {t:.3f}" for n, (a, t) in PAPER_NGRAM.items()),
            judged,
            what="all within 0.03 of the paper",
        )

    def figures(self, runs: dict[str, Run], out: Path) -> list[Path]:
        finals = list(self._finals(runs).values())
        names = sorted(finals[0], key=lambda name: -np.mean([f[name][0] for f in finals]))
        fig, axes = plt.subplots(1, 2, figsize=(11, 0.35 * len(names) + 1.5), sharey=True)
        panels = (
            (axes[0], 0, "validity accuracy (fraction)"),
            (axes[1], 1, "TVD (probability, lower is better)"),
        )
        for ax, index, label in panels:
            values = [[f[n][index] for f in finals] for n in names]
            colours = ["tab:grey" if "gram" in n and "+" not in n else "tab:blue" for n in names]
            ax.barh(names, [np.mean(v) for v in values], color=colours)
            ax.scatter(
                [x for v in values for x in v],
                [n for n, v in zip(names, values, strict=True) for _ in v],
                color="black",
                s=8,
                zorder=3,
                label="one seed",
            )
            ax.set_xlabel(label)
        axes[0].set_ylabel("model, or in-context n-gram baseline (grey)")
        axes[0].invert_yaxis()  # the axes share y: inverting each would undo it
        axes[0].legend(loc="lower right")
        run = next(iter(runs.values()))
        seeds = ", ".join(map(str, _by_seed(runs)))
        fig.suptitle(
            f"RegBench test prompts after {units_text(run, run.checkpoint_steps[-1])}\n"
            f"mean over seeds {seeds} (bars), each seed (dots); grey: in-context n-gram baselines"
        )
        fig.tight_layout()
        path = out / "icll_architectures.png"
        save_png(fig, path)
        return [path]
