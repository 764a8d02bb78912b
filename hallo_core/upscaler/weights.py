"""Loading Hallo2's upscaler weights (`hallo2/net_g.pth`) into `TemporalCodeFormer`.

The official file is a basicsr checkpoint `{"params_ema": state_dict, "params": state_dict}`; inference uses
`params_ema` (video_sr.py:L142), so do we, falling back to `params`. A safetensors file holds the state dict itself.
`.pth` files are read by the restricted unpickler (`hallo_core.loading.safe_pickle`), memory-mapped; the model is built on
the meta device and each tensor is put in place once, cast and moved (`hallo_core.loading.state_dict.materialize`), so loading
never holds two copies. Loading is strict: every one of the official keys with its shape, nothing else.

`random_state_dict` makes the deterministic random weights of the test golden (tests/fixtures/upscaler/README.md).
"""

from __future__ import annotations

import hashlib
import os
from typing import Mapping

import torch

from ..errors import ModelFileError
from ..loading.safe_pickle import load_torch_checkpoint
from ..loading.state_dict import LazyStateDict, build_on_meta, materialize
from .temporal_codeformer import TemporalCodeFormer, TemporalCodeFormerConfig

WEIGHTS_HINT = "use hallo2/net_g.pth from the Hugging Face repo fudan-generative-ai/hallo2 (pretrained_models/hallo2/)"


def read_upscaler_state_dict(path: str | os.PathLike) -> Mapping[str, torch.Tensor]:
    """Name -> tensor mapping of an upscaler checkpoint (`params_ema`, else `params`, of a `.pth`; or safetensors)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"upscaler weights not found: {path}; {WEIGHTS_HINT}")
    if path.endswith(".safetensors"):
        return LazyStateDict(path)
    content = load_torch_checkpoint(path)
    if not isinstance(content, Mapping):
        raise ModelFileError(f"{path}: the checkpoint holds no state dict; {WEIGHTS_HINT}")
    for key in ("params_ema", "params"):
        if isinstance(content.get(key), Mapping):
            content = content[key]
            break
    return {name: t for name, t in content.items() if isinstance(t, torch.Tensor)}


def _shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    if isinstance(state, LazyStateDict):
        return {name: state.shape(name) for name in state}
    return {name: tuple(t.shape) for name, t in state.items()}


def _check_kind(shapes: Mapping[str, tuple[int, ...]], source: str) -> None:
    """Name the fix for the files people confuse with net_g.pth."""
    if "conv_first.weight" in shapes and "conv_last.weight" in shapes:
        raise ModelFileError(f"{source} is a RealESRGAN model (background upscaler), not the face upscaler; "
                             f"{WEIGHTS_HINT}")
    if "position_emb" not in shapes or "quantize.embedding.weight" not in shapes:
        raise ModelFileError(f"{source} is not a Hallo2 upscaler checkpoint (no CodeFormer keys); {WEIGHTS_HINT}")
    if "ft_layers.0.self_attn.in_proj_weight" in shapes and "ft_layers.0.temp_attn.in_proj_weight" not in shapes:
        raise ModelFileError(f"{source} is plain CodeFormer without Hallo2's temporal layers; {WEIGHTS_HINT}")


def load_temporal_codeformer(
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    config: TemporalCodeFormerConfig | Mapping | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TemporalCodeFormer:
    """Build the network from a weights file (or a state dict) and load it strictly; eval mode, no gradients.

    The configuration is read from the weights' shapes unless given; a partial mapping (e.g. a golden's `config`)
    overrides the inferred values, which matters for the head count (`n_head`), the one size shapes do not show.
    """
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "upscaler state dict"
    state = read_upscaler_state_dict(source) if isinstance(source, (str, os.PathLike)) else source
    shapes = _shapes(state)
    _check_kind(shapes, name)
    if not isinstance(config, TemporalCodeFormerConfig):
        given = dict(config or {})
        inferred = TemporalCodeFormerConfig.from_state_dict(shapes, n_head=given.get("n_head"))
        config = TemporalCodeFormerConfig.from_dict({**inferred.to_dict(), **given})
    if config.dim_embd % config.n_head:
        raise ModelFileError(f"{name}: n_head={config.n_head} does not divide dim_embd={config.dim_embd}; "
                             "give the head count the weights were trained with")
    model = build_on_meta(lambda: TemporalCodeFormer(config))
    materialize(model, ((k, state[k]) for k in state), dtype=dtype, device=device, source=name)
    return model.eval().requires_grad_(False)


def random_state_dict(config: TemporalCodeFormerConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic random weights for tests and goldens (float32, CPU).

    One `torch.Generator` seeded with `seed` draws standard normals for the keys in sorted order; each is scaled so
    activations stay O(1): matrices and kernels by fan_in^-0.5, norm scales as 1 + 0.1 n, everything else 1-D
    (biases) as 0.1 n.
    """
    model = build_on_meta(lambda: TemporalCodeFormer(config))
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(shapes):
        shape = shapes[name]
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        if len(shape) >= 2:
            fan_in = 1
            for size in shape[1:]:
                fan_in *= size
            out[name] = noise * fan_in**-0.5
        elif name.endswith(".weight"):
            out[name] = 1.0 + 0.1 * noise
        else:
            out[name] = 0.1 * noise
    return out


def state_dict_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """Digest of names, shapes and float32 bytes in sorted order (checks regenerated golden weights)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()
