"""Singh et al.'s own training step, imported from a checkout of aadityasingh/icl-dynamics and built
as their main.py builds it for the paper's main run (ih_paper_runs.sh, figure 3a).

    <jax venv>/bin/python benchmarks/peers/singh_peer.py PEER_REPO   (started by singh.py)

One step is what one iteration of main.py's training loop does: split the seeds, draw a batch with
their jitted data sampler, and call their jitted train_step (Adam; loss, gradient norm and the
per-microbatch gradient spread). Evaluation and checkpoints, which main.py runs on a schedule, are
left out. The Omniglot feature file is replaced by Gaussian features of the same shape (the data's
values do not change the work done).
"""

import sys
import time
import types
from collections.abc import Callable
from functools import partial

from worker import protocol_channel, serve

# main.py's flags for the main run, less the file and bookkeeping ones (lr 1e-5, batch 32, d_model 64)
MAIN_RUN = (
    "--mixing_coeffs 1.0 --pt_burstiness 1 --train_context_len 2 --fs_relabel 5 --fs_relabel_split 8 2 0"
    " --exemplar_split 1 4 0 --train_bs 32 --eval_every 5000 --lr 0.00001 --d_model 64"
    " --class_split 50 1473 100 --init_seed 5"
)
FEATURE_DIM = 512


def compatibility_shims() -> None:
    """Let their code (written for JAX 0.4.26, NumPy 1) import under a current JAX and NumPy 2."""
    import jax

    # nptyping, used only in their type hints, does not import under NumPy 2 (np.bool8 is gone)
    sys.modules["nptyping"] = types.SimpleNamespace(NDArray=dict, Floating=float, Int=int)
    jax.tree_map = getattr(jax, "tree_map", jax.tree.map)  # both removed from current JAX
    jax.tree_leaves = getattr(jax, "tree_leaves", jax.tree.leaves)


def build(repo: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """Their model, optimiser, sampler and train_step as main.py sets them up; (step, sync)."""
    sys.path.insert(0, repo)
    compatibility_shims()
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import main
    import main_utils
    import opto
    import samplers

    parser = main_utils.create_parser()
    opto.add_args_to_parser(parser)
    opts = parser.parse_args(MAIN_RUN.split())
    opts.train_microbs = opts.train_bs
    opts.model_output_classes = opts.fs_relabel
    shape = (sum(opts.class_split), sum(opts.exemplar_split), FEATURE_DIM)
    data = jax.random.normal(jax.random.PRNGKey(0), shape)
    splits = main_utils.get_splits_from_opts(opts, data.shape)
    classes = splits["class"]["train"]
    class_sampler = partial(
        samplers.get_mixed_seq_idxs,
        mix_probabilities=jnp.array(opts.mixing_coeffs),
        mix_substrate_fns=[
            partial(
                samplers.get_constant_burst_seq_idxs,
                classes=classes,
                class_distr=jnp.ones(len(classes)) / len(classes),  # zipf_alpha 0
                num_seqs=opts.train_bs,
                context_len=opts.train_context_len,
                burstiness=opts.pt_burstiness[0],
                distractor=1,
                no_support=0,
                unique_rest=0,
            )
        ],
    )
    exemplar_sampler = partial(
        samplers.get_exemplar_inds,
        allowed_inds=splits["exemplar"]["train"],
        match_query_and_distractors=opts.match_query_and_distractors,
    )
    make_batch = samplers.make_data_sampler(
        class_sampler,
        exemplar_sampler,
        fs_relabel=splits["relabeling"]["train"],
        noise_scale=opts.noise_scale_train,
        assign_query_label_random=opts.assign_query_label_random,
    )
    sample = jax.jit(partial(make_batch, data=data))
    fwd_fn = opto.make_fn_from_opts(opts)
    model = main_utils.get_model_from_opts(opts, input_shape=(FEATURE_DIM,))
    optimizer = main_utils.get_optimizer_from_opts(opts)
    data_seed, model_seed = jax.random.split(jax.random.PRNGKey(opts.train_seed), 2)
    state = {"model": model, "opt_state": optimizer.init(eqx.filter(model, eqx.is_array))}
    state.update(data_seed=data_seed, model_seed=model_seed)

    def step() -> None:
        state["data_seed"], data_key = jax.random.split(state["data_seed"])
        batch = sample(data_key)
        state["model_seed"], model_key = jax.random.split(state["model_seed"])
        state["metrics"], state["model"], state["opt_state"] = main.train_step(
            model=state["model"],
            fwd_fn=fwd_fn,
            optimizer=optimizer,
            opt_state=state["opt_state"],
            microbs=opts.train_microbs,
            weight_decay=opts.weight_decay,
            x=batch["examples"],
            y=batch["labels"],
            key=model_key,
        )

    return step, lambda: jax.block_until_ready((state["model"], state["opt_state"], state["metrics"]))


def run() -> None:
    """Build their step from the checkout in argv[1] and serve it."""
    channel = protocol_channel()
    start = time.perf_counter()
    step, sync = build(sys.argv[1])
    import equinox
    import jax
    import optax

    versions = {"jax": jax.__version__, "equinox": equinox.__version__, "optax": optax.__version__}
    serve(channel, step, sync, time.perf_counter() - start, versions)


if __name__ == "__main__":
    run()
