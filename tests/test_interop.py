"""Round trips through the real libraries: our models open in TransformerLens with the same logits
and hook_z, and our SAEs load in SAELens and encode our activations to the same features."""

from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from icl_lab.errors import ExportError
from icl_lab.experiment import build_model, load_config
from icl_lab.interop.transformer_lens import export_transformer_lens, load_hooked_transformer, tl_config
from test_sae import sae_of

transformer_lens = pytest.importorskip("transformer_lens")  # installed by `make test` (extra: interop)
sae_lens = pytest.importorskip("sae_lens")

VARIANTS = {
    "attn-only, learned positions, LN": {"attn_only": True},
    "rope, no LN, no biases": {"positional": "rope", "norm": "none", "bias": False},
    "MLP gelu, sinusoidal": {"attn_only": False, "positional": "sinusoidal", "d_mlp": 24},
    "MLP gelu_new (tanh), tied unembedding": {
        "attn_only": False,
        "tie_unembed": True,
        "init": "gpt2",
        "act_fn": "gelu_new",
    },
    "MLP relu, no positions, unscaled": {
        "attn_only": False,
        "act_fn": "relu",
        "positional": "none",
        "attn_scale": False,
    },
}


def random_model(**model: object) -> torch.nn.Module:
    config = tiny_config(model={"name": "transformer", "n_layers": 2, "n_heads": 2, "d_model": 16, **model})
    net = build_model(config)
    net.reset_parameters(torch.Generator().manual_seed(3))
    with torch.no_grad():  # non-trivial biases and norms, so that a misplaced one shows
        for name, p in net.named_parameters():
            if not name.split(".")[-1].startswith("W_"):
                p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    return net.eval()


@pytest.mark.parametrize("variant", VARIANTS)
def test_transformer_lens_gives_our_logits_and_hook_z(variant: str, tmp_path: Path) -> None:
    ours = random_model(**VARIANTS[variant])
    tl = load_hooked_transformer(export_transformer_lens(ours, tmp_path / "tl", "tiny"))
    tokens = torch.randint(0, 16, (3, 16), generator=torch.Generator().manual_seed(1))
    our_logits, our_cache = ours.run_with_cache(tokens)
    tl_logits, tl_cache = tl.run_with_cache(tokens)
    torch.testing.assert_close(tl_logits, our_logits, atol=1e-5, rtol=1e-4)
    if not ours.cfg.attn_only:  # where the activations differ by more than the logits show (gelu's forms)
        x = torch.linspace(-4, 4, 81)
        torch.testing.assert_close(tl.blocks[0].mlp.act_fn(x), ours.blocks[0].mlp.act(x), atol=1e-6, rtol=0)
    for layer in range(2):
        for hook in ("attn.hook_z", "attn.hook_pattern", "hook_resid_post"):
            name = f"blocks.{layer}.{hook}"
            torch.testing.assert_close(tl_cache[name], our_cache[name], atol=1e-5, rtol=1e-4, msg=name)


def test_what_transformer_lens_cannot_express_is_refused_by_name() -> None:
    with pytest.raises(ExportError, match="post-LayerNorm blocks"):
        tl_config(random_model(norm="post"))
    with pytest.raises(ExportError, match="n-gram layers"):
        tl_config(random_model(ngram_layers=[{"after": 0, "n": 2}]))
    singh = build_model(load_config("singh"))  # a readout without an MLP, on vector inputs
    with pytest.raises(ExportError, match=r"a readout \(logits at chosen positions only\), vector inputs$"):
        tl_config(singh)


@pytest.mark.parametrize("architecture", ["relu_l1", "topk", "batchtopk", "jumprelu"])
def test_saelens_loads_our_sae_and_encodes_hook_z_to_our_features(architecture: str, tmp_path: Path) -> None:
    from icl_lab.sae.export import export_saelens

    model = random_model(attn_only=True)
    tokens = torch.randint(0, 16, (4, 16), generator=torch.Generator().manual_seed(2))
    _, cache = model.run_with_cache(tokens, names_filter="blocks.1.attn.hook_z")
    z = cache["blocks.1.attn.hook_z"]  # (B, T, H, e): SAELens reshapes hook_z itself
    fields = {"k": 4} if "topk" in architecture else {}
    sae = sae_of(architecture, d_in=16, expansion=4, **fields)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1, generator=torch.Generator().manual_seed(4))
    scale = 1.7
    if architecture == "batchtopk":  # its inference threshold, estimated on other prompts: on these,
        # it would equal one of their activations exactly, a tie that rounding decides either way
        other = torch.randint(0, 16, (4, 16), generator=torch.Generator().manual_seed(3))
        _, other_cache = model.run_with_cache(other, names_filter="blocks.1.attn.hook_z")
        sae.train()
        sae.encode(other_cache["blocks.1.attn.hook_z"].flatten(2).flatten(0, 1) * scale)
    sae.eval()
    source = {"run": "runs/tiny", "step": 12, "member": 1}
    export_saelens(sae, tmp_path / "sae", "blocks.1.attn.hook_z", "tiny", 16, scale, source)
    loaded = sae_lens.SAE.load_from_disk(str(tmp_path / "sae"), device="cpu")
    metadata = loaded.cfg.metadata  # read as SAELens 6 metadata, not rebuilt as a pre-6.0 config's
    assert (metadata.hook_name, metadata.model_name) == ("blocks.1.attn.hook_z", "tiny")
    assert metadata.context_size == 16
    assert metadata.prepend_bos is False and metadata.icl_lab_source == source
    theirs = loaded.encode(z)  # (B, T, d_sae)
    ours = sae.encode(z.flatten(2) * scale)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)
    assert (ours > 0).any()
    reconstruction = (sae.decode(ours) / scale).view_as(z)  # SAELens gives hook_z its head axis back
    torch.testing.assert_close(loaded.decode(theirs), reconstruction, atol=1e-5, rtol=1e-4)


def test_export_command_writes_a_model_transformer_lens_loads(tmp_path: Path, cli) -> None:
    from icl_lab.training.trainer import train

    run = train(tiny_config(), str(tmp_path / "runs"), progress=False)
    code, _, err = cli("export", run.path, tmp_path / "tl")
    assert code == 0, err
    tl = load_hooked_transformer(str(tmp_path / "tl"))  # a path as a string, as typed at a prompt
    with pytest.raises(ExportError, match=r"runs holds no TransformerLens export \(tl_config.json and"):
        load_hooked_transformer(tmp_path / "runs")
    tokens = torch.randint(0, 16, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(tl(tokens), run.model()(tokens), atol=1e-5, rtol=1e-4)
    code, _, err = cli("export", run.path, tmp_path / "tl2", "--checkpoint", "5")
    assert code == 2 and "no checkpoint at step 5" in err
    (tmp_path / "tl" / "tl_config.json").write_text("{")
    with pytest.raises(ExportError, match=r"tl holds a damaged TransformerLens export \(JSONDecodeError"):
        load_hooked_transformer(tmp_path / "tl")


def test_export_refuses_a_damaged_run_and_notes_clamps_it_cannot_carry(tmp_path: Path, cli) -> None:
    import shutil

    from icl_lab.training.trainer import train

    clamp = {"kind": "ablate", "heads": ["1.0"], "mode": "zero", "steps": {"from": 0, "until": 8}}
    run = train(tiny_config(clamps=[clamp]), str(tmp_path / "runs"), progress=False)
    code, out, err = cli("export", run.path, tmp_path / "tl", "--checkpoint", "4")
    assert code == 0, err
    assert "note: the run trains with clamps active at step 4 (ablate); the export holds its weights" in out
    code, out, err = cli("export", run.path, tmp_path / "tl")
    assert code == 0 and "note" not in out, "the clamp's window closed at step 8"
    damaged = Path(shutil.copytree(run.path, tmp_path / "damaged"))
    for path in (damaged / "checkpoints").glob("step_000000012.*"):
        path.unlink()
    code, _, err = cli("export", damaged, tmp_path / "tl3")
    assert code == 2 and "marked complete, but its final checkpoint (step 12) is gone" in err
    assert not (tmp_path / "tl3").exists()
