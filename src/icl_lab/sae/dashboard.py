"""A self-contained HTML dashboard of one SAE run: quality, the feature-density histogram, each
head's features by family, a searchable list of every feature (density, head attribution, family,
whether its decoder row trained), and cards for a selection of features with their top-activating
contexts, each token shaded by its direct feature attribution as a source of the destination token
(boxed)."""

import html
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from icl_lab.errors import ConfigError
from icl_lab.files import atomic_write_text
from icl_lab.report.html import figures_html, page, save_png
from icl_lab.sae.activations import hook_z
from icl_lab.sae.attribution import (
    FAMILIES,
    all_feature_families,
    decoder_head_shares,
    direct_feature_attribution,
)
from icl_lab.sae.base import SAE
from icl_lab.sae.metrics import SAEQuality, sae_quality
from icl_lab.sae.run import UNMOVED, SAERun, Source
from icl_lab.seeding import generator
from icl_lab.store.metrics_table import read_metrics
from icl_lab.tasks import Batch

STYLE = """
.ctx { font-family: ui-monospace, monospace; font-size: 0.8em; line-height: 1.9; margin: 0.3em 0; }
.ctx span { padding: 1px 0; border-radius: 2px; white-space: pre; }
.ctx .dest { outline: 2px solid #222; }
.card { border-top: 1px solid #ddd; padding-top: 0.5em; }
#search { width: 30em; padding: 0.3em; }
"""

# filters the feature list as one types; ?q=... in the address fills the box on load
SEARCH = """
const box = document.getElementById("search");
const rows = Array.from(document.querySelectorAll("#features tbody tr"));
function filter() {
  const q = box.value.trim().toLowerCase();
  let shown = 0;
  for (const row of rows) {
    const hit = !q || row.dataset.text.includes(q);
    row.hidden = !hit;
    shown += hit;
  }
  document.getElementById("shown").textContent = shown;
}
box.addEventListener("input", filter);
box.value = new URLSearchParams(location.search).get("q") || "";
filter();
"""


def _density_figure(quality: SAEQuality, tokens: int, seed: int) -> Figure:
    counts, edges = quality.density_histogram()
    fig, ax = plt.subplots(figsize=(6.5, 3.4), constrained_layout=True)
    ax.stairs(counts.numpy(), edges.numpy(), fill=True, color="C0")
    ax.set(
        xlabel="log10 feature density (share of tokens the feature fires on)",
        ylabel="features",
        title=f"feature densities on {tokens:,} tokens (seed {seed}); dead: {quality.dead_fraction:.1%}",
    )
    return fig


def draw_head_families(
    ax: Axes, shares: Tensor, families: Tensor, layer: int, min_share: float = 0.5
) -> None:
    """Per head, the features whose decoder share is at least min_share, stacked by family."""
    H = shares.shape[1]
    bottom = np.zeros(H)
    for k, name in enumerate([*FAMILIES, "never active"]):
        label = k if k < len(FAMILIES) else -1
        counts = np.array([int(((shares[:, h] >= min_share) & (families == label)).sum()) for h in range(H)])
        ax.bar(range(H), counts, bottom=bottom, label=name, color=f"C{k}")
        bottom += counts
    ax.set(xlabel="head", ylabel=f"features (decoder share >= {min_share})", xticks=range(H))
    ax.set_xticklabels([f"{layer}.{h}" for h in range(H)])


def _head_family_figure(s: "Scored", layer: int, seed: int) -> Figure:
    fig, ax = plt.subplots(figsize=(6.5, 3.4), constrained_layout=True)
    draw_head_families(ax, s.shares[s.moved], s.families[s.moved], layer)
    ax.set_title(
        f"features attributed to each head, by family, among the {int(s.moved.sum())} trained decoder "
        f"rows (seed {seed})",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    return fig


def _shade(values: Tensor) -> list[str]:
    """Background colours: orange for positive attribution, blue for negative, by |value| / max."""
    top = float(values.abs().max()) or 1.0
    out = []
    for v in values.tolist():
        alpha = min(abs(v) / top, 1.0) * 0.85
        out.append(f"rgba(255,140,0,{alpha:.2f})" if v >= 0 else f"rgba(30,110,255,{alpha:.2f})")
    return out


def _context_html(labels: list[str], dfa: Tensor, dest: int, activation: float, width: int = 12) -> str:
    """Tokens up to the destination: the ones near it, and around the strongest sources, elided
    between; each shaded by its attribution to the feature at the destination."""
    keep = set(range(max(0, dest - width), dest + 1))
    for src in dfa[: dest + 1].abs().topk(min(3, dest + 1)).indices.tolist():
        keep |= set(range(max(0, src - 3), min(dest + 1, src + 4)))
    colours, parts, previous = _shade(dfa), [], -1
    for pos in sorted(keep):
        if pos != previous + 1:
            parts.append("<span> … </span>")
        label = html.escape(labels[pos])
        tip = f"position {pos}: DFA {dfa[pos]:.3g}"
        cls = ' class="dest"' if pos == dest else ""
        parts.append(f'<span{cls} style="background:{colours[pos]}" title="{tip}">{label}</span>')
        previous = pos
    return f'<div class="ctx">{"".join(parts)} <small>(activation {activation:.3g})</small></div>'


def _spread(density: Tensor, cards: int) -> list[int]:
    """`cards` live features spread evenly over the ranking by density."""
    live = torch.nonzero(density > 0).squeeze(1)
    if not len(live):
        return []
    ranked = live[density[live].argsort(descending=True)]
    picks = np.linspace(0, len(ranked) - 1, min(cards, len(ranked))).round().astype(int)
    return sorted({int(ranked[i]) for i in picks})


@dataclass
class Scored:
    """An SAE on a batch of sequences (B, T): its features (B, T, d_sae), quality and densities,
    decoder shares by head (d_sae, H), families (d_sae,) and decoder rows' cosines to their
    initialisation (d_sae,)."""

    sae: SAE
    inputs: Tensor
    acts: Tensor
    quality: SAEQuality
    shares: Tensor
    families: Tensor
    cosine: Tensor

    @cached_property  # computed once; the feature list reads it for each of its rows
    def moved(self) -> Tensor:
        """(d_sae,) features whose decoder rows trained: the only ones with learned head shares."""
        return self.cosine < UNMOVED

    def family(self, f: int) -> str:
        k = int(self.families[f])
        return FAMILIES[k] if k >= 0 else "never active"


def _feature_row(s: Scored, f: int, layer: int, linked: bool) -> str:
    top = int(s.shares[f].argmax())
    head = f"{layer}.{top} ({float(s.shares[f, top]):.0%})" if s.moved[f] else "untrained row"
    text = html.escape(f"{f} {s.family(f)} {head}".lower())
    name = f'<a href="#f{f}">{f}</a>' if linked else str(f)
    peak = float(s.acts[..., f].max())
    return (
        f'<tr data-text="{text}"><td>{name}</td><td>{float(s.quality.density[f]):.2e}</td>'
        f"<td>{peak:.3g}</td><td>{head}</td><td>{float(s.cosine[f]):.2f}</td><td>{s.family(f)}</td></tr>"
    )


def _feature_card(s: Scored, f: int, source: Source, run: SAERun, batch: Batch, contexts: int) -> str:
    """A feature's density, family and head shares, and its top-activating contexts (one per
    sequence) shaded by per-source DFA summed over heads."""
    layer = run.config.source.layer
    best = s.acts[..., f].max(1)  # the strongest position of each sequence
    shown = []
    for b in best.values.argsort(descending=True)[:contexts].tolist():
        if best.values[b] <= 0:
            break
        dest, index = int(best.indices[b]), torch.tensor([f])
        dfa = direct_feature_attribution(source.model, s.inputs[b : b + 1], layer, s.sae, index, run.scale)
        per_source = dfa.per_source[0, dest, :, :, 0].sum(-1)  # (T_src,)
        labels = source.task.token_labels(batch, b)
        shown.append(_context_html(labels, per_source, dest, float(best.values[b])))
    heads = ", ".join(f"{layer}.{h}: {v:.0%}" for h, v in enumerate(s.shares[f].tolist()))
    if not s.moved[f]:
        heads += f" (chance: the row's cosine to its random initialisation is {float(s.cosine[f]):.2f})"
    return (
        f'<section class="card" id="f{f}"><h3>Feature {f}</h3><p>density {float(s.quality.density[f]):.2e}'
        f" · family {s.family(f)} · decoder share by head: {heads}</p>"
        + ("".join(shown) or "<p>never active on these sequences</p>")
        + "</section>"
    )


def _summary(run: SAERun, s: Scored, sequences: int) -> str:
    cfg, sae, q = run.config, s.sae, s.quality
    table = read_metrics(run.metrics_path)
    rows = [r for r in table.to_pylist() if r["split"] == "eval"]
    last = max((r["step"] for r in rows), default=None)
    recovered = next((r["value"] for r in rows if r["step"] == last and r["metric"] == "ce_recovered"), None)
    src, step = cfg.source, run.manifest.get("source_step", cfg.source.step)
    at = "latest" if step is None else step
    fields = {
        "SAE run": run.id,
        "source": f"{src.run} (step {at}, member {src.member}), {hook_z(src.layer)}",
        "architecture": f"{cfg.sae.architecture}, d_in {sae.d_in}, d_sae {sae.d_sae}",
        "seed": cfg.seed,
        "scored on": f"{sequences} held-out sequences = {s.acts.shape[0] * s.acts.shape[1]:,} tokens",
        "L0 (features per token)": f"{q.l0:.2f}",
        "explained variance": f"{q.explained_variance:.3f}",
        f"CE loss recovered (evaluation at step {last})": "-" if recovered is None else f"{recovered:.3f}",
        "dead / dense features": f"{q.dead_fraction:.1%} / {q.dense_fraction:.1%}",
        "trained decoder rows": f"{int(s.moved.sum())} of {sae.d_sae} (cosine to their initialisation < "
        f"{UNMOVED:g}; the others' head shares are chance)",
    }
    cells = (f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in fields.items())
    return f"<table>{''.join(cells)}</table>"


LEGEND = (
    "<p>Shading: direct feature attribution of each source token to the feature at the boxed "
    "destination (orange positive, blue negative; hover for the value). Family: where a feature's "
    "positive attribution comes from (short-range: within 4 tokens before the destination; induction: "
    "the token after an earlier occurrence of the destination's token; long-range: elsewhere). "
    "Top head: the head with the largest share of the feature's decoder norm, given only for rows "
    f"that trained (cosine to their random initialisation < {UNMOVED:g}): rarely firing features' rows "
    "barely move, and their shares are the initialisation's.</p>"
)


@torch.no_grad()
def write_dashboard(
    run: SAERun,
    sequences: int = 32,
    cards: int = 48,
    contexts: int = 4,
    features: list[int] | None = None,
    source: Source | None = None,
) -> Path:
    """Write RUN/dashboard/index.html (and its PNGs); returns the page. Scores `sequences` held-out
    sequences of the source task; cards for `features`, or `cards` live features spread evenly
    over the density ranking."""
    cfg = run.config
    sae = run.sae()
    source = source or run.source()
    layer = cfg.source.layer
    batch = source.task.sample(sequences, generator(cfg.seed, "sae", "dashboard"))
    _, cache = source.model.run_with_cache(batch.inputs, names_filter=hook_z(layer))
    x = cache[hook_z(layer)].flatten(2) * run.scale  # (B, T, d_in)
    scored = Scored(
        sae,
        batch.inputs,
        sae.encode(x),
        sae_quality(sae, x.flatten(0, 1)),
        decoder_head_shares(sae, source.n_heads),
        all_feature_families(source.model, batch.inputs, layer, sae, run.scale),
        run.cosine_to_init(sae),
    )
    features = _spread(scored.quality.density, cards) if features is None else features
    bad = [f for f in features if not 0 <= f < sae.d_sae]
    if bad:
        raise ConfigError(f"--features: no feature {bad[0]} (the SAE has {sae.d_sae})")
    out = run.path / "dashboard"
    out.mkdir(exist_ok=True)
    tokens = x.shape[0] * x.shape[1]
    images = {
        "Feature density": save_png(_density_figure(scored.quality, tokens, cfg.seed), out / "density.png"),
        "Head attribution": save_png(_head_family_figure(scored, layer, cfg.seed), out / "heads.png"),
    }
    by_density = scored.quality.density.argsort(descending=True, stable=True).tolist()  # live ones first
    rows = "".join(_feature_row(scored, f, layer, f in features) for f in by_density)
    body = (
        f"<style>{STYLE}</style><h1>SAE dashboard: {html.escape(run.id)}</h1>"
        + _summary(run, scored, sequences)
        + figures_html(images)
        + "<h2>Features</h2>"
        + LEGEND
        + '<p><input id="search" placeholder="search: feature id, family, head (e.g. induction, 1.2)"> '
        f'<span id="shown">{sae.d_sae}</span> of {sae.d_sae} features shown</p>'
        '<table id="features"><thead><tr><th>feature</th><th>density</th><th>max activation</th>'
        "<th>top head (decoder share)</th><th>decoder row's cosine to its initialisation</th>"
        f"<th>family</th></tr></thead><tbody>{rows}</tbody></table>"
        + "".join(_feature_card(scored, f, source, run, batch, contexts) for f in features)
        + f"<script>{SEARCH}</script>"
    )
    path = out / "index.html"
    atomic_write_text(path, page(f"SAE dashboard: {run.id}", body))
    return path
