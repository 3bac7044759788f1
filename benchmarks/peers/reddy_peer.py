"""Reddy's own training step, imported from the first commit of YiranHuangIrene/ICL (045dccf, which
carries his `transformer_v2.py`, `datasets_v2.py` and `ic_vs_iw_v3.py` before that repository's own
changes) and built as `ic_vs_iw_v3.py` builds it, at the paper's setting of `configs/reddy_paper.yaml`.

    <jax venv>/bin/python benchmarks/peers/reddy_peer.py PEER_REPO   (started by reddy.py)

One step is what one iteration of ic_vs_iw_v3.py's training loop does: draw a batch of 128 sequences
with `generate_input_seqs` (NumPy) and call the jitted `update` (plain SGD with weight decay).
Evaluation and the parameter and batch files the loop writes on a schedule are left out.
"""

import hashlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

from worker import protocol_channel, serve

# ic_vs_iw_v3.py's parameters, its argv as run.sh passes it set to the paper's setting: K = 2048
# classes, N = 8 context pairs, input width 128 (D = 128 - 65 content dims), no Zipf, B = 4,
# all sequences bursty (p_B = 1), none of novel classes (p_C = 0), eps = 0.1
PAPER = {"K": 2048, "N": 8, "width": 128, "alpha": 0.0, "B": 4, "p_B": 1.0, "p_C": 0.0, "eps": 0.1}
L, NMAX, BATCH, LR, ATT_LAYERS, MLP_LAYERS = 32, 32, 128, 0.01, 2, 3  # fixed in ic_vs_iw_v3.py


def build(repo: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """Their network, data and update as ic_vs_iw_v3.py sets them up; (step, sync)."""
    sys.path.insert(0, repo)
    import datasets_v2
    import jax
    import numpy as np
    import transformer_v2

    np.random.seed(0)
    key = jax.random.PRNGKey(0)
    K, D = PAPER["K"], PAPER["width"] - (2 * NMAX + 1)
    P = 1.0 / np.arange(1, K + 1) ** PAPER["alpha"]
    P /= P.sum()
    mus_label, mus_class, labels_class = datasets_v2.get_mus_label_class(K, L, D)
    params = transformer_v2.init_network_params(
        ATT_LAYERS, MLP_LAYERS, PAPER["width"], PAPER["width"], L, key, scale=1 / np.sqrt(D)
    )
    state = {"params": params}

    def step() -> None:
        inputs, labels, _ = datasets_v2.generate_input_seqs(
            mus_label, mus_class, labels_class, BATCH, PAPER["N"], NMAX, eps=PAPER["eps"], P=P,
            B=PAPER["B"], p_B=PAPER["p_B"], p_C=PAPER["p_C"], output_target_labels=True, no_repeats=True,
        )  # fmt: skip
        state["params"] = transformer_v2.update(state["params"], inputs, labels, lr=LR)

    return step, lambda: jax.block_until_ready(state["params"])


def run() -> None:
    """Build their step from the checkout in argv[1] and serve it."""
    channel = protocol_channel()
    start = time.perf_counter()
    repo = sys.argv[1]
    step, sync = build(repo)
    import jax
    import numpy

    sources = {
        name: hashlib.sha256((Path(repo) / name).read_bytes()).hexdigest()[:16]
        for name in ("transformer_v2.py", "datasets_v2.py")
    }
    versions = {"jax": jax.__version__, "numpy": numpy.__version__, "sha256": sources}
    serve(channel, step, sync, time.perf_counter() - start, versions)


if __name__ == "__main__":
    run()
