"""The full 5B checkpoint's keys (from the official classes) load through our loader with the right shapes."""

import json

import torch

from hallo_core.hallo3.checkpoint import SAT_DROPPED, SAT_PREFIXES, ours_to_sat, sat_to_ours
from hallo_core.hallo3.config import Hallo3Config
from hallo_core.hallo3.reference_net import IdentityReferenceNet
from hallo_core.hallo3.transformer import Hallo3Transformer
from hallo_core.loading.state_dict import build_on_meta


def _mapped_shapes(keys: dict, prefix: str) -> tuple[dict, set]:
    shapes, dropped = {}, set()
    for name, shape in keys.items():
        if not name.startswith(prefix):
            continue
        mapped = sat_to_ours(name[len(prefix):], torch.empty(shape, device="meta"))
        if not mapped:
            dropped.add(name[len(prefix):])
        for ours, tensor in mapped:
            assert ours not in shapes, f"two SAT tensors map to {ours}"
            shapes[ours] = tuple(tensor.shape)
    return shapes, dropped


def test_every_official_key_is_consumed_with_its_shape(golden_dir):
    description = json.loads((golden_dir / "hallo3_full_keys.json").read_text())
    keys = description["keys"]
    assert all(k.startswith(tuple(SAT_PREFIXES.values())) for k in keys)
    for role, model_class in (("main", Hallo3Transformer), ("reference", IdentityReferenceNet)):
        shapes, dropped = _mapped_shapes(keys, SAT_PREFIXES[role])
        assert dropped == set(SAT_DROPPED), "only the RoPE buffers and the unused position table may be dropped"
        config = Hallo3Config.from_shapes(shapes)
        if role == "reference":
            config = config.reference_config()
        assert (config.num_layers, config.hidden_size, config.num_attention_heads) == (42, 3072, 48)
        assert (config.latent_height, config.latent_width, config.latent_frames) == (60, 90, 13)
        model = build_on_meta(lambda: model_class(config))
        expected = {n: tuple(t.shape) for n, t in [*model.named_parameters(), *model.named_buffers()]}
        assert set(expected) == set(shapes), set(expected) ^ set(shapes)
        mismatched = [n for n in expected if expected[n] != shapes[n]]
        assert not mismatched, mismatched[:5]
        if role == "main":
            assert sum(t.numel() for t in model.parameters()) == 8_921_057_344  # the official 5B transformer's count
            assert config.audio_context_tokens == 32 and config.audio_token_dim == 768
            assert config.face_tokens == 4 and config.face_token_dim == 1024
        else:
            assert sum(t.numel() for t in model.parameters()) == 5_625_087_552


def test_sat_names_round_trip(golden_dir):
    keys = json.loads((golden_dir / "hallo3_full_keys.json").read_text())["keys"]
    prefix = SAT_PREFIXES["main"]
    sat = {k[len(prefix):]: torch.empty(s, device="meta") for k, s in keys.items()
           if k.startswith(prefix) and k[len(prefix):] not in SAT_DROPPED}
    ours = {}
    for name, tensor in sat.items():
        ours.update(dict(sat_to_ours(name, tensor)))
    back = ours_to_sat(ours)
    assert set(back) == set(sat)
    assert all(tuple(back[k].shape) == tuple(sat[k].shape) for k in sat)


def test_adaln_and_fused_splits_are_exact():
    adaln = torch.arange(12 * 4, dtype=torch.float32).reshape(12 * 4, 1)
    (n1_name, n1), (n2_name, n2) = sat_to_ours("mixins.adaln_layer.adaLN_modulations.3.1.weight", adaln)
    assert n1_name == "transformer_blocks.3.norm1.linear.weight"
    chunks = adaln.chunk(12)
    # norm1 = (shift, scale, gate) of msa for video then text; norm2 the mlp ones.
    assert torch.equal(n1, torch.cat([chunks[i] for i in (0, 1, 2, 6, 7, 8)]))
    assert torch.equal(n2, torch.cat([chunks[i] for i in (3, 4, 5, 9, 10, 11)]))
    kv = torch.arange(6.0).reshape(6, 1)
    (k_name, k), (v_name, v) = sat_to_ours("transformer.layers.0.audio_attn.key_value.weight", kv)
    assert (k_name, v_name) == ("transformer_blocks.0.attn_audio.to_k.weight", "transformer_blocks.0.attn_audio.to_v.weight")
    assert torch.equal(k, kv[:3]) and torch.equal(v, kv[3:])
