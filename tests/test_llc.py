"""The LLC estimator against closed forms, devinterp's estimator, and a trained run."""

import math
import warnings

import numpy as np
import pytest
import torch

from conftest import tiny_config
from icl_lab.analysis.llc import LLCConfig, run_llc, sgld_llc, vmap_chains
from icl_lab.errors import ConfigError
from icl_lab.training.trainer import train

B = 256
NBETA = B / math.log(B)


def regression_losses(x_basis: torch.Tensor, w0: torch.Tensor, g: torch.Generator):
    """Minibatch squared error of linear regression whose inputs span x_basis's columns (rank r)."""

    def losses(params: dict, t: int) -> torch.Tensor:
        w = params["w"]  # (C, d)
        x = torch.randn(w.shape[0], B, x_basis.shape[1], generator=g) @ x_basis.T  # (C, B, d)
        y = x @ w0 + 0.1 * torch.randn(w.shape[0], B, generator=g)
        return 0.5 * ((y - torch.einsum("cbd,cd->cb", x, w)) ** 2).mean(1)

    return losses


def gaussian_llc(rank: int, config: LLCConfig) -> float:
    """nbeta E[L(w) - L(w*)] for the SGLD chain on a quadratic with `rank` unit curvatures: the
    posterior of precision a = nbeta + gamma, its variance inflated by the step's 1 / (1 - eps a / 4)."""
    a = NBETA + config.localization
    return 0.5 * rank * NBETA / (a * (1 - config.step_size * a / 4))


@pytest.mark.parametrize("rank", [10, 4])
def test_quadratic_loss_of_known_rank_gives_half_its_rank(rank):
    d, g = 10, torch.Generator().manual_seed(rank)
    basis = torch.linalg.qr(torch.randn(d, d, generator=g))[0][:, :rank]  # orthonormal (d, rank)
    w0 = torch.randn(d, generator=g)
    config = LLCConfig(step_size=1e-3, localization=1.0, chains=8, draws=1000, burn_in=200, nbeta=NBETA)
    est = sgld_llc(
        regression_losses(basis, w0, g), {"w": w0}, config, NBETA, torch.Generator().manual_seed(1)
    )
    error_bar = est.std / math.sqrt(config.chains)
    assert abs(est.mean - gaussian_llc(rank, config)) < 3 * error_bar + 0.02 * rank
    assert abs(est.mean - rank / 2) < 3 * error_bar + 0.05 * rank  # d/2 up to gamma's and eps's bias
    assert est.problems() == []


def test_a_degenerate_direction_has_a_lower_llc_than_a_regular_one():
    """y = w x has lambda 1/2 at w = 0; y = w^2 x, whose loss is quartic there, has 1/4."""
    g = torch.Generator().manual_seed(0)

    def losses(power: int):
        def f(params: dict, t: int) -> torch.Tensor:
            w = params["w"]  # (C, 1)
            x = torch.randn(w.shape[0], B, generator=g)
            y = 0.1 * torch.randn(w.shape[0], B, generator=g)
            return 0.5 * ((y - w**power * x) ** 2).mean(1)

        return f

    config = LLCConfig(step_size=1e-3, localization=0.01, chains=16, draws=2000, burn_in=200, nbeta=NBETA)
    regular, degenerate = (
        sgld_llc(losses(p), {"w": torch.zeros(1)}, config, NBETA, torch.Generator().manual_seed(p))
        for p in (1, 2)
    )
    bar = math.hypot(regular.std, degenerate.std) / math.sqrt(config.chains)
    assert regular.mean - degenerate.mean > 3 * bar
    assert abs(regular.mean - 0.5) < 3 * regular.std / math.sqrt(config.chains) + 0.03
    assert abs(degenerate.mean - 0.25) < 3 * degenerate.std / math.sqrt(config.chains) + 0.03


def test_agrees_with_devinterps_estimator_on_a_shared_example():
    sampler = pytest.importorskip("devinterp.slt.sampler")
    from devinterp.optim.sgld import SGLD
    from devinterp.slt.llc import LLCEstimator

    d, n, g = 6, 20_000, torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.randn(d, generator=g) + 0.5 * torch.randn(n, generator=g)
    w_star = torch.linalg.lstsq(x, y[:, None]).solution[:, 0]  # the empirical loss's minimum
    config = LLCConfig(step_size=1e-3, localization=10.0, chains=8, draws=600, burn_in=100, nbeta=NBETA)

    def ours(params: dict, t: int) -> torch.Tensor:
        index = torch.randint(n, (params["w"].shape[0], B), generator=g)  # (C, B) minibatches
        return 0.5 * ((y[index] - torch.einsum("cbd,cd->cb", x[index], params["w"])) ** 2).mean(1)

    est = sgld_llc(ours, {"w": w_star}, config, NBETA, torch.Generator().manual_seed(1))

    model = torch.nn.Linear(d, 1, bias=False)
    model.weight.data = w_star[None].clone()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=B, shuffle=True)
    estimator = LLCEstimator(config.chains, config.draws, init_loss=None, nbeta=NBETA)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sampler.sample(
            model,
            loader,
            callbacks=[estimator],
            evaluate=lambda m, batch: 0.5 * ((batch[1] - m(batch[0])[:, 0]) ** 2).mean(),
            sampling_method=SGLD,
            optimizer_kwargs={"lr": config.step_size, "localization": config.localization, "nbeta": NBETA},
            num_chains=config.chains,
            num_draws=config.draws,
            num_burnin_steps=config.burn_in,
            seed=0,
            verbose=False,
        )
    theirs = estimator.get_results()
    bar = math.hypot(est.std, theirs["llc/std"]) / math.sqrt(config.chains)
    assert abs(est.mean - theirs["llc/mean"]) < 3 * bar, (est.mean, theirs["llc/mean"], bar)
    assert 0.3 * d / 2 < est.mean < d / 2  # regular: d/2, less gamma's pull back


def test_a_diverging_chain_is_reported_not_averaged():
    config = LLCConfig(step_size=1.0, localization=0.0, chains=2, draws=50, nbeta=NBETA)
    est = sgld_llc(
        lambda p, t: (p["w"] ** 2).sum(1) * 1e3, {"w": torch.ones(3)}, config, NBETA, torch.Generator()
    )
    assert not est.finite and "diverged" in est.problems()[0]


def test_a_chain_that_runs_away_but_stays_finite_is_reported():
    """One chain and three draws: the drift check cannot see it (no spread over chains), the
    bound can (an LLC is at most half the parameter count)."""
    config = LLCConfig(step_size=1.0, localization=0.0, chains=1, draws=3, burn_in=0, nbeta=NBETA)
    est = sgld_llc(
        lambda p, t: (p["w"] ** 2).sum(1) * 1e3, {"w": torch.ones(3)}, config, NBETA, torch.Generator()
    )
    assert est.finite and est.stationary and est.mean > 1e10
    assert est.problems() == [
        f"LLC {est.mean:.3g} is over twice its largest possible value (half the 3 parameters): the "
        "chains ran away; lower the step size"
    ]


def test_the_llc_of_a_trained_run_is_positive_and_reproducible(tmp_path):
    run = train(
        tiny_config(training={"batch_size": 32, "length": {"steps": 150}}), str(tmp_path), progress=False
    )
    config = LLCConfig(step_size=1e-4, localization=100.0, chains=2, draws=30)
    step = run.checkpoint_steps[-1]
    first, again = (run_llc(run, step, config) for _ in range(2))
    assert np.array_equal(first.per_chain, again.per_chain)
    assert first.trace.shape == (2, config.steps) and np.isfinite(first.trace).all()
    assert first.mean > 0
    assert first.nbeta == 60.0  # Hoogland et al.'s, the default
    draws = first.trace[:, first.draws_from :: config.every]
    assert np.allclose(first.per_chain, first.nbeta * (draws.mean(1) - first.init_loss), rtol=1e-5)
    devinterp = LLCConfig(step_size=1e-4, localization=100.0, chains=2, draws=30, nbeta=None)
    assert run_llc(run, step, devinterp).nbeta == pytest.approx(32 / math.log(32))  # batch / ln batch


def test_vmapped_chains_equal_chains_run_one_after_another(tmp_path):
    """A GPU runs the chains as one vmapped ensemble, a CPU one at a time: same data, same noise,
    same estimate."""
    run = train(
        tiny_config(training={"batch_size": 16, "length": {"steps": 20}}), str(tmp_path), progress=False
    )
    estimates = [
        run_llc(run, 20, LLCConfig(chains=3, draws=6, burn_in=2, vmap_chains=vmapped))
        for vmapped in (True, False)
    ]
    assert np.allclose(estimates[0].trace, estimates[1].trace, rtol=1e-4, atol=1e-5)
    assert np.allclose(estimates[0].per_chain, estimates[1].per_chain, rtol=1e-3, atol=1e-3)


def test_chains_of_lstm_and_gru_models_never_vmap() -> None:
    """torch's LSTM and GRU have no vmap rule: such chains run one by one by default, even on a GPU,
    and asking for vmapped ones is refused; other models' chains vmap on a GPU by default."""
    lstm = tiny_config(model={"name": "mixer_lm", "mixer": "lstm", "n_layers": 1, "d_model": 16})
    assert not vmap_chains(LLCConfig(chains=3), lstm, "cuda")
    for device in ("cpu", "cuda"):
        with pytest.raises(
            ConfigError, match=r"^llc\.vmap_chains: lstm models do not train as one vmapped ensemble"
        ):
            vmap_chains(LLCConfig(chains=3, vmap_chains=True), lstm, device)
    assert not vmap_chains(LLCConfig(chains=1, vmap_chains=True), lstm, "cuda"), "one chain: nothing to vmap"
    assert vmap_chains(LLCConfig(chains=3), tiny_config(), "cuda")
    assert not vmap_chains(LLCConfig(chains=3), tiny_config(), "cpu")
