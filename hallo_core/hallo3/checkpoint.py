"""Hallo3 transformer checkpoints: the official SAT/DeepSpeed container and our safetensors layout.

Official: `pretrained_models/hallo3/latest` names a folder `<n>` holding `mp_rank_00_model_states.pt`, whose `module`
entry is the flat state dict of the whole engine: `model.diffusion_model.*` (main transformer),
`ref_model.diffusion_model.*` (reference network) and possibly `first_stage_model.*` / `conditioner.*` (VAE, T5).
SAT names are mapped to ours: fused QKV and key_value rows are split, the 12-way adaLN
linear is split into diffusers' norm1/norm2 halves, and the recomputable RoPE buffers and the unused
`transformer.position_embeddings` are dropped (the only keys that are).

Ours (written by `convert`, read from ComfyUI's `models/diffusion_models/`): one safetensors file per network with
diffusers-style names and the configuration in the metadata (docs/checkpoints.md).
"""

from __future__ import annotations

import functools
import json
import os
import re
from typing import Callable, Iterator, Mapping

import torch

from ..errors import ModelFileError
from ..loading.state_dict import LazyStateDict, build_on_meta, materialize, read_json_metadata
from .config import Hallo3Config
from .reference_net import IdentityReferenceNet
from .transformer import Hallo3Transformer

SAT_PREFIXES = {"main": "model.diffusion_model.", "reference": "ref_model.diffusion_model."}
SAT_DROPPED = ("mixins.pos_embed.freqs_sin", "mixins.pos_embed.freqs_cos", "transformer.position_embeddings.weight")
FORMAT_KEY = "hallo3.format"
CONFIG_KEY = "hallo3.config"
FORMATS = {"main": "hallo3-transformer", "reference": "hallo3-reference"}

# SAT name (after the prefix) <-> ours. Placeholders: {i} layer, {kind} face|audio, {p} weight|bias, {rest} any.
_RENAMES = [
    ("mixins.patch_embed.proj.{p}", "patch_embed.proj.{p}"),
    ("mixins.patch_embed.text_proj.{p}", "patch_embed.text_proj.{p}"),
    ("mixins.pos_embed.pos_embedding", "patch_embed.pos_embedding"),
    ("time_embed.0.{p}", "time_embedding.linear_1.{p}"),
    ("time_embed.2.{p}", "time_embedding.linear_2.{p}"),
    ("mixins.adaln_layer.query_layernorm_list.{i}.{p}", "transformer_blocks.{i}.attn1.norm_q.{p}"),
    ("mixins.adaln_layer.key_layernorm_list.{i}.{p}", "transformer_blocks.{i}.attn1.norm_k.{p}"),
    ("mixins.final_layer.norm_final.{p}", "norm_out.norm.{p}"),
    ("mixins.final_layer.adaLN_modulation.1.{p}", "norm_out.linear.{p}"),
    ("mixins.final_layer.linear.{p}", "proj_out.{p}"),
    ("transformer.final_layernorm.{p}", "norm_final.{p}"),
    ("transformer.layers.{i}.input_layernorm.{p}", "transformer_blocks.{i}.norm1.norm.{p}"),
    ("transformer.layers.{i}.post_attention_layernorm.{p}", "transformer_blocks.{i}.norm2.norm.{p}"),
    ("transformer.layers.{i}.attention.dense.{p}", "transformer_blocks.{i}.attn1.to_out.0.{p}"),
    ("transformer.layers.{i}.mlp.dense_h_to_4h.{p}", "transformer_blocks.{i}.ff.net.0.proj.{p}"),
    ("transformer.layers.{i}.mlp.dense_4h_to_h.{p}", "transformer_blocks.{i}.ff.net.2.{p}"),
    ("transformer.layers.{i}.{kind}_input_layernorm.{p}", "transformer_blocks.{i}.norm_{kind}.{p}"),
    ("transformer.layers.{i}.{kind}_attn.query.{p}", "transformer_blocks.{i}.attn_{kind}.to_q.{p}"),
    ("transformer.layers.{i}.{kind}_attn.dense.{p}", "transformer_blocks.{i}.attn_{kind}.to_out.0.{p}"),
    ("transformer.audio_proj.{rest}", "audio_proj.{rest}"),
    ("transformer.face_proj.{rest}", "face_proj.{rest}"),
]
# SAT fused tensors -> several of ours, split in equal parts along dim 0 (rows [Q;K;V] and [K;V]).
_SPLITS = [
    ("transformer.layers.{i}.attention.query_key_value.{p}",
     ["transformer_blocks.{i}.attn1.to_q.{p}", "transformer_blocks.{i}.attn1.to_k.{p}",
      "transformer_blocks.{i}.attn1.to_v.{p}"]),
    ("transformer.layers.{i}.{kind}_attn.key_value.{p}",
     ["transformer_blocks.{i}.attn_{kind}.to_k.{p}", "transformer_blocks.{i}.attn_{kind}.to_v.{p}"]),
]
# The 12-way adaLN linear: (shift, scale, gate) x (msa, mlp) for video, then the same for text. diffusers' norm1
# holds the attention half [video msa; text msa], norm2 the MLP half.
_ADALN = ("mixins.adaln_layer.adaLN_modulations.{i}.1.{p}",
          ["transformer_blocks.{i}.norm1.linear.{p}", "transformer_blocks.{i}.norm2.linear.{p}"])
_PLACEHOLDERS = {"i": r"\d+", "kind": "face|audio", "p": "weight|bias", "rest": ".+"}


@functools.lru_cache(maxsize=None)
def _template_regex(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for name, allowed in _PLACEHOLDERS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{allowed})", 1)
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P={name})")
    return re.compile(pattern)


def _match(template: str, name: str) -> dict | None:
    match = _template_regex(template).fullmatch(name)
    return match.groupdict() if match else None


def sat_to_ours(name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """One SAT tensor (prefix removed) -> our tensors; [] for the dropped ones; ModelFileError if unknown."""
    if name in SAT_DROPPED:
        return []
    fields = _match(_ADALN[0], name)
    if fields is not None:
        c = tensor.chunk(12, dim=0)
        norm1, norm2 = (t.format(**fields) for t in _ADALN[1])
        return [(norm1, torch.cat(c[0:3] + c[6:9])), (norm2, torch.cat(c[3:6] + c[9:12]))]
    for sat, targets in _SPLITS:
        fields = _match(sat, name)
        if fields is not None:
            return [(t.format(**fields), part) for t, part in zip(targets, tensor.chunk(len(targets), dim=0))]
    for sat, ours in _RENAMES:
        fields = _match(sat, name)
        if fields is not None:
            return [(ours.format(**fields), tensor)]
    raise ModelFileError(f"unknown tensor '{name}' in the Hallo3 checkpoint; is this a Hallo3 file?")


def ours_to_sat(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `sat_to_ours` for a whole network (used to write official-layout tiny models)."""
    out: dict[str, torch.Tensor] = {}
    pending = dict(state)
    for name in list(state):
        if name not in pending:
            continue
        fields = _match(_ADALN[1][0], name)
        if fields is not None:
            n1 = pending.pop(name).chunk(6, dim=0)
            n2 = pending.pop(_ADALN[1][1].format(**fields)).chunk(6, dim=0)
            out[_ADALN[0].format(**fields)] = torch.cat(n1[0:3] + n2[0:3] + n1[3:6] + n2[3:6])
            continue
        for sat, targets in _SPLITS:
            fields = _match(targets[0], name)
            if fields is not None:
                out[sat.format(**fields)] = torch.cat([pending.pop(t.format(**fields)) for t in targets])
                break
        else:
            for sat, ours in _RENAMES:
                fields = _match(ours, name)
                if fields is not None:
                    out[sat.format(**fields)] = pending.pop(name)
                    break
    if pending:
        raise KeyError(f"no SAT name for {sorted(pending)[:3]}")
    return out


def find_official_container(path: str | os.PathLike) -> str:
    """`pretrained_models/`, `pretrained_models/hallo3/`, or the `.pt` itself -> the `.pt` file path."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return path
    for folder in (path, os.path.join(path, "hallo3")):
        latest = os.path.join(folder, "latest")
        if os.path.isfile(latest):
            with open(latest) as f:
                tag = f.read().strip()
            candidate = os.path.join(folder, tag, "mp_rank_00_model_states.pt")
            if not os.path.isfile(candidate):
                raise ModelFileError(f"{latest} names '{tag}' but {candidate} is missing; download the Hallo3 weights "
                                     "again (hf download fudan-generative-ai/hallo3 --local-dir pretrained_models)")
            return candidate
    raise ModelFileError(f"no Hallo3 checkpoint at {path}: expected hallo3/latest and hallo3/<n>/"
                         "mp_rank_00_model_states.pt (hf download fudan-generative-ai/hallo3 --local-dir pretrained_models)")


class TransformerWeights:
    """The tensors of one network (main or reference) from any supported source, in our names."""

    def __init__(self, path: str | os.PathLike, role: str):
        if role not in SAT_PREFIXES:
            raise ValueError(role)
        self.role = role
        self.path = os.fspath(path)
        file = self.path if self.path.endswith(".safetensors") else find_official_container(self.path)
        self.state = LazyStateDict(file, subtree=None if file.endswith(".safetensors") else "module")
        self.source = file
        fmt = self.state.metadata.get(FORMAT_KEY)
        if fmt is not None:
            if fmt != FORMATS[role]:
                raise ModelFileError(f"{file} holds the {fmt}, not the {FORMATS[role]}; pick the matching file")
            self.sat_prefix = None
        else:
            prefix = SAT_PREFIXES[role]
            if not any(k.startswith(prefix) for k in self.state):
                raise ModelFileError(f"{file}: no '{prefix}*' weights; not an official Hallo3 checkpoint "
                                     "(or the wrong file of a converted pair)")
            self.sat_prefix = prefix

    def carries(self, prefix: str) -> bool:
        """Whether the file also holds tensors under `prefix`, e.g. the VAE's `first_stage_model.` in an official
        container: the official loader lets such tensors override the separately loaded files."""
        return any(name.startswith(prefix) for name in self.state)

    def items(self, meta: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
        """(our name, tensor); with `meta`, shape-only meta tensors (nothing is read)."""
        for name in self.state:
            if self.sat_prefix is None:
                yield name, (torch.empty(self.state.shape(name), device="meta") if meta else self.state[name])
                continue
            if not name.startswith(self.sat_prefix):
                continue  # the other network, VAE or T5 keys of the same container
            tensor = torch.empty(self.state.shape(name), device="meta") if meta else self.state[name]
            yield from sat_to_ours(name[len(self.sat_prefix):], tensor)

    def lazy_entries(self) -> list[tuple[str, tuple[int, ...], Callable[[], torch.Tensor]]]:
        """(our name, shape, produce) for streaming conversion: each tensor is read only when produced."""
        entries = []
        for name in self.state:
            if self.sat_prefix is None:
                entries.append((name, self.state.shape(name), functools.partial(self.state.__getitem__, name)))
                continue
            if not name.startswith(self.sat_prefix):
                continue
            short = name[len(self.sat_prefix):]
            mapped = sat_to_ours(short, torch.empty(self.state.shape(name), device="meta"))
            for index, (ours, meta) in enumerate(mapped):
                entries.append((ours, tuple(meta.shape), functools.partial(self._produce, name, short, index)))
        return entries

    def _produce(self, name: str, short: str, index: int) -> torch.Tensor:
        return sat_to_ours(short, self.state[name])[index][1]

    def config(self, **overrides) -> Hallo3Config:
        stored = read_json_metadata(self.state, CONFIG_KEY)
        if isinstance(stored, dict):
            return Hallo3Config.from_json(json.dumps({**stored, **overrides}))
        shapes = {name: tuple(t.shape) for name, t in self.items(meta=True)}
        return Hallo3Config.from_shapes(shapes, **overrides)


FP8_PREFIXES = ("transformer_blocks.", "audio_proj.", "face_proj.")


def fp8_storage(compute_dtype: torch.dtype) -> Callable[[str, tuple[int, ...]], torch.dtype]:
    """Storage policy for fp8: the matrices of the blocks and projections in float8_e4m3fn, the rest (norms, biases,
    embeddings, the position table, the output layer) in the compute dtype. Layers upcast fp8 weights on the fly."""

    def dtype_for(name: str, shape: tuple[int, ...]) -> torch.dtype:
        is_matrix = name.endswith(".weight") and len(shape) >= 2
        return torch.float8_e4m3fn if is_matrix and name.startswith(FP8_PREFIXES) else compute_dtype

    return dtype_for


def store_in_fp8(model: torch.nn.Module, compute_dtype: torch.dtype) -> torch.nn.Module:
    """An in-memory model's weights re-stored as `fp8_storage(compute_dtype)` says (what loading with it gives)."""
    dtype_for = fp8_storage(compute_dtype)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.data = param.data.to(dtype_for(name, tuple(param.shape)))
    return model


def load_transformer(path, dtype=torch.bfloat16, device="cpu", config: Hallo3Config | None = None,
                     dtype_for=None) -> Hallo3Transformer:
    """The main transformer in `dtype` (or per-tensor `dtype_for`, e.g. `fp8_storage(dtype)`) on `device`."""
    weights = TransformerWeights(path, "main")
    config = config or weights.config()
    model = build_on_meta(lambda: Hallo3Transformer(config))
    return materialize(model, weights.items(), dtype, device, source=weights.source, dtype_for=dtype_for).eval()


def load_reference_net(path, dtype=torch.bfloat16, device="cpu", config: Hallo3Config | None = None,
                       dtype_for=None) -> IdentityReferenceNet:
    weights = TransformerWeights(path, "reference")
    config = (config or weights.config()).reference_config()
    model = build_on_meta(lambda: IdentityReferenceNet(config))
    return materialize(model, weights.items(), dtype, device, source=weights.source, dtype_for=dtype_for).eval()
