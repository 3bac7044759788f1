"""An SAE in SAELens's on-disk format: `cfg.json` and `sae_weights.safetensors`, loadable with
`sae_lens.SAE.load_from_disk` (SAELens 6.x), reading hook_z of the model it was trained on.

relu_l1 is SAELens's "standard" architecture and topk its "topk"; jumprelu and batchtopk (whose
inference rule is a global threshold) are its "jumprelu", with a threshold per feature. An input
scale (expected-norm normalisation) is folded into the weights, so the exported SAE reads raw
hook_z: W_enc x scale, W_dec / scale, b_dec / scale.

The metadata names the SAELens version whose format this is (without it SAELens reads the file as
a pre-6.0 config and drops the metadata: hook_name, context_size and prepend_bos among them) and
the model run, checkpoint step and ensemble member the SAE reads, which its TransformerLens export
must match (`icl-lab export RUN OUT --checkpoint STEP --member M`).
"""

import json
from pathlib import Path

import torch

from icl_lab.files import atomic_write_text, save_tensors
from icl_lab.sae.base import SAE

ARCHITECTURES = {"relu_l1": "standard", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu"}
SAELENS_FORMAT = "6.54.0"
"""the SAELens version whose on-disk format export_saelens writes (the interop extra pins 6.54.x)"""


@torch.no_grad()
def export_saelens(
    sae: SAE,
    directory: Path,
    hook_name: str,
    model_name: str,
    context_size: int,
    scale: float = 1.0,
    source: dict[str, object] | None = None,
) -> Path:
    """Write the SAE into directory (created) in SAELens's format, `source` (the model run, step
    and member it reads) in its metadata; returns the directory."""
    architecture = sae.config.architecture
    if architecture not in ARCHITECTURES:
        raise ValueError(f"no SAELens architecture for {architecture!r} (known: {', '.join(ARCHITECTURES)})")
    weights = {
        "W_enc": sae.W_enc * scale,
        "W_dec": sae.W_dec / scale,
        "b_enc": sae.b_enc.clone(),
        "b_dec": sae.b_dec / scale,
    }
    extra: dict[str, object] = {}
    if architecture == "topk":
        extra["k"] = sae.config.k
    elif architecture == "batchtopk":
        weights["threshold"] = sae.threshold.clamp(min=0).expand(sae.d_sae).clone()
    elif architecture == "jumprelu":
        weights["threshold"] = sae.threshold.clone()
    cfg = {
        "architecture": ARCHITECTURES[architecture],
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "hook_z",
        **extra,
        "metadata": {
            "sae_lens_version": SAELENS_FORMAT,
            "hook_name": hook_name,
            "model_name": model_name,
            "context_size": context_size,
            "prepend_bos": False,
            "icl_lab_architecture": architecture,
            "icl_lab_config": sae.config.model_dump(mode="json"),
            "icl_lab_source": source or {},
        },
    }
    tensors = {name: t.detach().contiguous().float().cpu() for name, t in weights.items()}
    save_tensors(directory / "sae_weights.safetensors", tensors)
    atomic_write_text(directory / "cfg.json", json.dumps(cfg, indent=1))
    return directory
