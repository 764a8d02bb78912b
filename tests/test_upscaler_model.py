"""Hallo2's temporal CodeFormer (hallo_core.upscaler.temporal_codeformer) and its loader and parity command.

The golden in tests/fixtures/upscaler was made by the official Hallo2 CodeFormer class at a small transformer width
and half convolution width (recipe in tests/fixtures/upscaler/README.md); its weights are regenerated here from the
recorded seed and checked against the recorded digest.
"""

import json
import pathlib

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from hallo_core.dev import upscaler_parity as parity_module
from hallo_core.dev.upscaler_parity import run_upscaler_parity
from hallo_core.errors import InputError, ModelFileError
from hallo_core.upscaler.face_parsing import ParseNetConfig, load_parsenet, parsing_mask, random_parsenet_state_dict
from hallo_core.upscaler.temporal_codeformer import (
    EncodedClip,
    TemporalCodeFormer,
    TemporalCodeFormerConfig,
    TemporalTransformerLayer,
)
from hallo_core.upscaler.weights import (
    load_temporal_codeformer,
    random_state_dict,
    read_upscaler_state_dict,
    state_dict_sha256,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "fixtures"
KEYS_TSV = SHARED / "golden" / "hallo2_upscaler_keys.tsv"
FIXTURES = REPO / "tests" / "fixtures" / "upscaler"
TINY = TemporalCodeFormerConfig(dim_embd=64, n_head=4, n_layers=2, codebook_size=128, nf=32)


def official_keys() -> dict[str, tuple[int, ...]]:
    rows = KEYS_TSV.read_text().strip().splitlines()[1:]
    return {name: tuple(json.loads(shape)) for name, shape, _ in (row.split("\t") for row in rows)}


@pytest.fixture(scope="module")
def tiny_state():
    return random_state_dict(TINY, seed=0)


@pytest.fixture(scope="module")
def tiny_model(tiny_state):
    return load_temporal_codeformer(tiny_state, TINY)


# ------------------------------------------------------------------------------------------------ keys and loading


def test_all_official_keys_with_their_shapes_on_meta():
    keys = official_keys()
    assert len(keys) == 623
    with torch.device("meta"):
        model = TemporalCodeFormer()
    ours = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert ours == keys
    assert sum(int(np.prod(s)) for s in ours.values()) == 113_037_763
    assert list(model.buffers()) == []


def test_config_inferred_from_official_shapes():
    config = TemporalCodeFormerConfig.from_state_dict(official_keys())
    assert config == TemporalCodeFormerConfig()  # 512 wide, 8 heads, 9 layers, 1024 codes, nf 64
    assert config.dim_mlp == 1024 and config.latent_size == 256
    assert [config.channels(s) for s in ("16", "32", "64", "128", "256", "512")] == [512, 256, 256, 128, 128, 64]


def test_pth_params_ema_is_preferred_and_loading_is_strict(tmp_path, tiny_state):
    other = {k: v.clone() for k, v in tiny_state.items()}
    other["position_emb"] = torch.zeros_like(other["position_emb"])
    path = tmp_path / "net_g.pth"
    torch.save({"params": other, "params_ema": tiny_state}, path)  # writing a test file; reading is safe_pickle
    model = load_temporal_codeformer(path, {"n_head": 4})
    assert torch.equal(model.position_emb, tiny_state["position_emb"])
    assert model.config == TINY
    assert not any(p.requires_grad for p in model.parameters())
    torch.save({"params": other}, path)
    assert torch.equal(read_upscaler_state_dict(path)["position_emb"], other["position_emb"])


def test_safetensors_and_dtype(tmp_path, tiny_state):
    path = tmp_path / "hallo2_vq_upscaler.safetensors"
    save_file(tiny_state, str(path))
    model = load_temporal_codeformer(path, {"n_head": 4}, dtype=torch.bfloat16)
    assert model.feat_emb.weight.dtype == torch.bfloat16
    assert torch.equal(model.feat_emb.weight.float(), tiny_state["feat_emb.weight"].bfloat16().float())


@pytest.mark.parametrize("case, message", [
    ("missing", "missing"),
    ("extra", "unexpected weight"),
    ("shape", "has shape"),
    ("codeformer", "without Hallo2's temporal layers"),
    ("realesrgan", "RealESRGAN"),
    ("other", "not a Hallo2 upscaler checkpoint"),
])
def test_wrong_files_are_refused_in_one_line(case, message, tiny_state):
    state = dict(tiny_state)
    if case == "missing":
        del state["ft_layers.1.temp_linear2.bias"]
    elif case == "extra":
        state["ft_layers.0.temp_pos"] = torch.zeros(3)
    elif case == "shape":
        state["idx_pred_layer.1.weight"] = torch.zeros(64, 64)
    elif case == "codeformer":
        state = {k: v for k, v in state.items() if ".temp_" not in k}
    elif case == "realesrgan":
        state = {"conv_first.weight": torch.zeros(64, 12, 3, 3), "conv_last.weight": torch.zeros(3, 64, 3, 3)}
    else:
        state = {"model.diffusion_model.x": torch.zeros(1)}
    with pytest.raises(ModelFileError, match=message) as error:
        load_temporal_codeformer(state, {"n_head": 4})
    assert "\n" not in str(error.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ModelFileError, match="not found.*hallo2/net_g.pth"):
        load_temporal_codeformer(tmp_path / "net_g.pth")
    bad = tmp_path / "net_g.pth"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ModelFileError, match="not a PyTorch zip checkpoint"):
        load_temporal_codeformer(bad)


# ------------------------------------------------------------------------------------------------ architecture


def _layer(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    layer = TemporalTransformerLayer(32, 4, 64).to(dtype).eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


def test_temporal_block_is_permutation_equivariant_over_frames():
    layer = _layer()
    b, f, d = 2, 5, 256
    tokens = torch.randn(d, b * f, 32, dtype=torch.float64)
    position = torch.randn(d, 1, 32, dtype=torch.float64)
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        out = layer(tokens, position, f)
        permuted = tokens.view(d, b, f, 32)[:, :, perm].reshape(d, b * f, 32)
        out_permuted = layer(permuted, position, f)
    expected = out.view(d, b, f, 32)[:, :, perm].reshape(d, b * f, 32)
    assert torch.allclose(out_permuted, expected, atol=1e-12, rtol=0)
    # ...and it does mix frames: changing frame 1 changes frame 0's output
    changed = tokens.clone()
    changed[:, 1] += torch.randn(256, 32, dtype=torch.float64)  # not a constant: LayerNorm would remove it
    with torch.no_grad():
        assert (layer(changed, position, f)[:, 0] - out[:, 0]).abs().max() > 1e-3


def test_frames_are_the_inner_factor_of_the_batch():
    """(B=2, F=3) equals each clip on its own: a swapped (b f) layout would mix frames of different clips."""
    layer = _layer(1)
    tokens = torch.randn(256, 6, 32, dtype=torch.float64)
    position = torch.randn(256, 1, 32, dtype=torch.float64)
    with torch.no_grad():
        both = layer(tokens, position, 3)
        first, second = layer(tokens[:, :3], position, 3), layer(tokens[:, 3:], position, 3)
    assert torch.allclose(both, torch.cat([first, second], 1), atol=1e-12, rtol=0)


def test_w0_skips_the_fusion(tiny_model):
    x = torch.rand(1, 1, 3, 512, 512, generator=torch.Generator().manual_seed(0)) * 2 - 1
    calls = []

    class Abort(Exception):
        pass

    def spy(module, inputs, output):
        calls.append(module)
        raise Abort

    handles = [m.register_forward_hook(spy) for m in tiny_model.fuse_convs_dict.values()]
    try:
        with torch.inference_mode():
            encoded = tiny_model.encode(x)
            codes = tiny_model.predict_logits(encoded).argmax(-1)
            out = tiny_model.decode(codes, encoded, w=0.0)
            assert calls == [] and out.shape == (1, 1, 3, 512, 512) and torch.isfinite(out).all()
            with pytest.raises(Abort):
                tiny_model.decode(codes, encoded, w=0.5)
            assert calls == [tiny_model.fuse_convs_dict["32"]]  # the first fusion runs after generator block 9
    finally:
        for h in handles:
            h.remove()


def test_frame_chunks_change_memory_not_numbers(tiny_model):
    """The convolutions can run a few frames at a time: the same encoder outputs, and each decoder chunk fuses its
    own frames' encoder taps (checked up to the first fusion, where a hook stops the decoder)."""
    x = torch.rand(1, 3, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1  # small: the encoder is
    with torch.inference_mode():                                                          # fully convolutional
        whole, chunked = tiny_model.encode(x), tiny_model.encode(x, frame_chunk=2)
    # another batch size may pick another convolution kernel: equal up to float rounding
    assert torch.allclose(whole.lq_feat, chunked.lq_feat, atol=1e-4, rtol=0)
    assert all(torch.allclose(whole.taps[k], chunked.taps[k], atol=1e-4, rtol=0) for k in whole.taps)

    g = torch.Generator().manual_seed(2)
    encoded = EncodedClip(lq_feat=torch.randn(3, 256, 16, 16, generator=g),
                          taps={s: torch.randn(3, TINY.channels(s), int(s), int(s), generator=g)
                                for s in TINY.connect_list},
                          batch=1, frames=3)
    seen = []

    class Stop(Exception):
        pass

    def spy(module, inputs, output):
        seen.append(inputs[0])
        raise Stop

    handle = tiny_model.fuse_convs_dict["32"].register_forward_hook(spy)
    try:
        with torch.inference_mode(), pytest.raises(Stop):
            tiny_model.decode(torch.zeros(3, 256, dtype=torch.long), encoded, 0.5, frame_chunk=2)
    finally:
        handle.remove()
    assert torch.equal(seen[0], encoded.taps["32"][:2])


# ------------------------------------------------------------------------------------------------ golden parity


def test_golden_parity_against_the_official_code(tmp_path, tiny_state):
    description = json.loads((FIXTURES / "upscaler_tiny.json").read_text())
    assert description["model"] == "hallo2_vq_upscaler"
    config = TemporalCodeFormerConfig.from_dict(description["config"])
    assert config == TINY
    state = random_state_dict(config, seed=description["weights"]["seed"])
    assert state_dict_sha256(state) == description["weights"]["sha256"], "weight recipe changed: regenerate golden"
    weights = tmp_path / "weights.safetensors"
    save_file(state, str(weights))
    report = run_upscaler_parity(str(weights), str(FIXTURES / "upscaler_tiny.io.safetensors"),
                                 str(FIXTURES / "upscaler_tiny.json"))
    assert report["ok"], report
    assert set(report["max_abs_diff"]) == {"outputs.forward.w0.out", "outputs.forward.w0.5.out",
                                           "outputs.top1_minus_top2_logit"}
    assert max(report["max_abs_diff"].values()) <= 1e-4
    assert report["code_mismatches"] == 0 and report["frames_compared"] == 4
    json.dumps(report)  # one JSON line for the CLI


class _FakeNetwork:
    """Stands in for the network in the parity harness: logits chosen by the test, decode = a function of the codes."""

    def __init__(self, logits):
        self.logits = logits
        self.config = TINY

    def encode(self, x):
        b, f = x.shape[:2]
        return EncodedClip(lq_feat=torch.zeros(b * f, 1, 1, 1), taps={}, batch=b, frames=f)

    def predict_logits(self, encoded):
        return self.logits

    def decode(self, codes, encoded, w, adain=True):
        out = (codes.float().sum(-1) * (1 + w)).view(encoded.batch, encoded.frames, 1, 1, 1)
        return out.expand(encoded.batch, encoded.frames, 3, 4, 4)


def _harness(tmp_path, monkeypatch, golden_codes, margins, with_codes=True):
    logits = torch.zeros(2, 256, 8)
    logits[:, :, 0] = 1.0
    logits[:, :, 1] = 0.5
    logits[0, 7, 1] = 1.0 - 1e-6  # a near tie at frame 0, token 7; our argmax is code 0
    monkeypatch.setattr(parity_module, "load_temporal_codeformer", lambda *a, **k: _FakeNetwork(logits))
    x = torch.zeros(1, 2, 3, 4, 4)
    fake = _FakeNetwork(logits)
    encoded = fake.encode(x)
    io = {"inputs.x": x, "outputs.top1_minus_top2_logit": margins.view(1, 2, 256)}
    for w in (0, 0.5):
        io[f"outputs.forward.w{w}.out"] = fake.decode(golden_codes, encoded, w).contiguous()
    if with_codes:
        io["outputs.codes"] = golden_codes.view(1, 2, 256).int()
    save_file(io, str(tmp_path / "io.safetensors"))
    (tmp_path / "g.json").write_text(json.dumps({"model": "hallo2_vq_upscaler", "config": {}, "ws": [0, 0.5]}))
    return run_upscaler_parity("unused", str(tmp_path / "io.safetensors"), str(tmp_path / "g.json"))


def test_parity_resolves_argmax_ties_and_catches_real_mismatches(tmp_path, monkeypatch):
    margins = torch.full((2, 256), 0.5)
    margins[0, 7] = 1e-6
    golden = torch.zeros(2, 256, dtype=torch.long)
    golden[0, 7] = 1  # the official code broke the tie the other way
    report = _harness(tmp_path, monkeypatch, golden, margins)
    assert report["ok"] and report["tie_flips"] == 1 and report["excluded_frames"] == {}
    assert report["max_abs_diff"]["outputs.forward.w0.5.out"] == 0.0
    # without the golden's codes the flip is found by trying the runner-up code at the ambiguous token
    report = _harness(tmp_path, monkeypatch, golden, margins, with_codes=False)
    assert report["ok"] and report["tie_flips"] == 1 and report["excluded_frames"] == {}
    # a different code where the golden margin is large is a real mismatch
    golden[1, 3] = 2
    report = _harness(tmp_path, monkeypatch, golden, margins)
    assert not report["ok"] and report["code_mismatches"] == 1
    report = _harness(tmp_path, monkeypatch, golden, margins, with_codes=False)
    assert not report["ok"] and report["max_abs_diff"]["outputs.forward.w0.out"] > 1e-4


def test_parity_refuses_other_goldens(tmp_path):
    (tmp_path / "g.json").write_text(json.dumps({"model": "hallo3"}))
    with pytest.raises(InputError, match="hallo2_vq_upscaler"):
        run_upscaler_parity("w", "io", str(tmp_path / "g.json"))


# ------------------------------------------------------------------------------------------------ face parsing


def test_parsenet_golden_against_the_official_code(tmp_path):
    from safetensors.torch import load_file

    description = json.loads((FIXTURES / "parsenet_tiny.json").read_text())
    config = ParseNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in description["config"].items()})
    state = random_parsenet_state_dict(config, seed=description["weights"]["seed"])
    assert state_dict_sha256(state) == description["weights"]["sha256"]
    path = tmp_path / "parsing_parsenet.pth"
    torch.save(state, path)  # the official file is a plain state dict
    model = load_parsenet(path)
    assert model.config == config
    io = load_file(str(FIXTURES / "parsenet_tiny.io.safetensors"))
    with torch.no_grad():
        mask_logits, image = model(io["inputs.x"])
    assert (mask_logits - io["outputs.mask_logits"]).abs().max() <= 1e-5
    assert (image - io["outputs.image"]).abs().max() <= 1e-5


def test_full_size_parsenet_keys_and_wrong_files(tmp_path):
    from hallo_core.upscaler.face_parsing import ParseNet

    with torch.device("meta"):
        model = ParseNet()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(shapes) == 238 and shapes["encoder.0.conv2d.weight"] == (64, 3, 3, 3)
    assert shapes["out_mask_conv.conv2d.weight"] == (19, 64, 3, 3)
    assert ParseNetConfig.from_state_dict(shapes) == ParseNetConfig()
    save_file({"x": torch.zeros(1)}, str(tmp_path / "p.safetensors"))
    with pytest.raises(ModelFileError, match="not a ParseNet"):
        load_parsenet(tmp_path / "p.safetensors")
    with pytest.raises(ModelFileError, match="not found"):
        load_parsenet(tmp_path / "missing.pth")


def test_parsing_mask_is_the_official_mask():
    """Labels -> 0 for background/hat/neck/cloth, 255 else -> GaussianBlur(101, 11) twice -> 10 px border -> /255."""
    import cv2

    labels = np.zeros((512, 512), np.int64)
    labels[100:400, 150:380] = 1  # skin
    labels[300:420, 200:300] = 17  # neck: excluded
    labels[60:140, 120:300] = 13  # hair: kept

    class FixedParser(torch.nn.Module):
        config = ParseNetConfig()

        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.nn.functional.one_hot(torch.from_numpy(labels), 19).permute(2, 0, 1)[None].float(), x

    mask = parsing_mask(FixedParser(), torch.zeros(1, 3, 512, 512))[0, 0].numpy()
    expected = np.where(np.isin(labels, [0, 14, 16, 17, 18]), 0.0, 255.0)
    expected = cv2.GaussianBlur(cv2.GaussianBlur(expected, (101, 101), 11), (101, 101), 11)
    expected[:10], expected[-10:], expected[:, :10], expected[:, -10:] = 0, 0, 0, 0
    assert np.abs(mask - expected / 255.0).max() < 1e-5
