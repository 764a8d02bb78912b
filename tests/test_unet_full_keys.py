"""The full-size net.pth key list (made from the official classes) is exactly what our networks consume."""

import json

import pytest
import torch

from hallo_core.hallo_unet.checkpoint import NETWORKS
from hallo_core.hallo_unet.config import PREFIXES, HalloUNetConfig
from hallo_core.loading.state_dict import build_on_meta, materialize


@pytest.fixture(scope="module")
def full(golden_dir):
    description = json.loads((golden_dir / "hallo_unet_full_keys.json").read_text())
    keys = {name: tuple(shape) for name, shape in description["keys"].items()}
    config = HalloUNetConfig.from_shapes(keys)
    models = {prefix: build_on_meta(lambda factory=factory: factory(config)) for prefix, factory in NETWORKS.items()}
    return description, keys, config, models


def test_every_official_key_is_consumed_with_its_shape_and_nothing_else_is_needed(full):
    description, keys, config, models = full
    assert len(keys) == description["count"] == 2656
    assert all(name.startswith(PREFIXES) for name in keys)
    assert config == HalloUNetConfig(), "the SD1.5 / Hallo configuration, inferred from the shapes alone"
    for prefix, model in models.items():
        expected = {name[len(prefix):]: shape for name, shape in keys.items() if name.startswith(prefix)}
        ours = {name: tuple(t.shape) for name, t in [*model.named_parameters(), *model.named_buffers()]}
        assert set(ours) == set(expected), (prefix, sorted(set(ours) ^ set(expected))[:5])
        assert {n: s for n, s in ours.items() if s != expected[n]} == {}, prefix
        numel = sum(torch.Size(s).numel() for s in expected.values())
        assert numel == description["per_prefix"][prefix[:-1]]["numel"]
        # The real loader accepts exactly this set (meta tensors: shapes only, nothing is read).
        tensors = ((name, torch.empty(shape, device="meta")) for name, shape in expected.items())
        materialize(model, tensors, torch.float16, device="meta", source=prefix)


def test_full_size_widths_and_the_never_run_motion_modules(full):
    _, _, config, models = full
    # Audio inner widths follow the block's input channels (official construction), narrower than the block.
    assert [config.audio_width("down", 1, k) for k in (0, 1)] == [320, 640]
    assert [config.audio_width("down", 2, k) for k in (0, 1)] == [640, 1280]
    assert [config.audio_width("up", 1, k) for k in range(3)] == [640] * 3
    assert [config.audio_width("up", 2, k) for k in range(3)] == [320] * 3
    denoiser = models["denoising_unet."]
    assert denoiser.down_blocks[3].attentions is None and len(denoiser.down_blocks[3].motion_modules) == 2
    assert denoiser.up_blocks[0].attentions is None and len(denoiser.up_blocks[0].motion_modules) == 3
    assert len(denoiser.spatial_transformers()) == 16
    reference = models["reference_unet."]
    assert not hasattr(reference, "conv_out") and not hasattr(reference, "conv_norm_out")
