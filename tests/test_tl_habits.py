"""TransformerLens habits work: keyword hook functions, (name, layer) cache keys, head results,
add_hook / reset_hooks, return_type='loss', and a clear error for PyTorch module hooks."""

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_BURSTY, TINY_READOUT_MODEL, tiny_config
from icl_lab.experiment import build_model
from icl_lab.models.activation_cache import act_name


@pytest.fixture(scope="module")
def model():
    return build_model(tiny_config(model={"name": "transformer", "attn_only": False})).eval()


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(16, (3, 16), generator=torch.Generator().manual_seed(0))


def test_a_keyword_only_hook_function_runs_and_its_return_replaces_the_activation(model, tokens) -> None:
    seen = []

    def ablate_head(activation: torch.Tensor, *, hook) -> torch.Tensor:
        seen.append(hook.name)
        activation[:, :, 0] = 0.0
        return activation

    clean = model(tokens)
    with model.hooks([("blocks.1.attn.hook_z", ablate_head)]):
        ablated, cache = model.run_with_cache(tokens, names_filter="blocks.1.attn.hook_z")
    assert seen == ["blocks.1.attn.hook_z"]
    assert (cache["z", 1][:, :, 0] == 0).all() and not torch.allclose(ablated, clean)


def test_cache_keys_index_as_in_transformer_lens(model, tokens) -> None:
    _, cache = model.run_with_cache(tokens)
    assert torch.equal(cache["pattern", 0], cache["blocks.0.attn.hook_pattern"])
    assert torch.equal(cache["z", 1], cache["blocks.1.attn.hook_z"])
    assert torch.equal(cache["z", -1], cache["z", 1])
    assert torch.equal(cache["resid_pre", 1], cache["blocks.1.hook_resid_pre"])
    assert torch.equal(cache["post", 0], cache["blocks.0.mlp.hook_post"])
    assert torch.equal(cache["embed"], cache["hook_embed"])
    assert ("attn", 0) in cache and act_name("attn_logits", 1) == "blocks.1.attn.hook_attn_scores"
    assert cache.stack_activation("pattern").shape == (2, 3, 2, 16, 16)
    with pytest.raises(KeyError, match=r"blocks\.5\.attn\.hook_pattern"):
        cache["pattern", 5]


def test_head_results_sum_to_the_attention_output(model, tokens) -> None:
    _, cache = model.run_with_cache(tokens)
    results, labels = cache.stack_head_results(return_labels=True)
    assert labels == ["L0H0", "L0H1", "L1H0", "L1H1"] and results.shape == (4, 3, 16, 16)
    for layer in (0, 1):
        total = results[2 * layer : 2 * layer + 2].sum(0) + model.blocks[layer].attn.b_O
        torch.testing.assert_close(total, cache["attn_out", layer], atol=1e-5, rtol=1e-5)


def test_add_hook_stays_until_reset(model, tokens) -> None:
    calls = []
    model.add_hook("blocks.0.hook_resid_post", lambda x, hook: calls.append(hook.name))
    model(tokens)
    model(tokens)
    model.reset_hooks()
    model(tokens)
    assert calls == ["blocks.0.hook_resid_post"] * 2


def test_return_type_loss_is_the_next_token_cross_entropy(model, tokens) -> None:
    logits, loss = model(tokens, return_type="both")
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 16), tokens[:, 1:].reshape(-1))
    assert torch.equal(model(tokens, return_type="loss"), loss) and torch.allclose(loss, expected)
    reader = build_model(tiny_config(task=TINY_BURSTY, model=TINY_READOUT_MODEL))
    with pytest.raises(ValueError, match="next-token loss of a language model"):
        reader(torch.zeros(2, 9, 28), return_type="loss")


def test_pytorch_module_hooks_on_a_hook_point_are_refused(model) -> None:
    with pytest.raises(TypeError, match="does not run PyTorch module hooks"):
        model.blocks[0].attn.hook_z.register_forward_hook(lambda *args: None)
