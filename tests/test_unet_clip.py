"""The clip-level API the render engine calls, on the tiny random Hallo2 set."""

import pytest
import torch
from diffusers.models.attention_processor import Attention

from hallo_core.dev.tiny_unet import TINY_FRAME_SIZE, write_tiny_hallo_unet
from hallo_core.errors import InputError
from hallo_core.hallo_unet.checkpoint import load_unet_models
from hallo_core.hallo_unet.clip import (
    ClipInputs,
    decode_latents,
    denoise_clip,
    encode_frames,
    motion_frame_pixels,
    prepare_clip,
)
from hallo_core.render.motion import MotionOptions, augment_motion_frames
from hallo_core.runtime.attention import attention_kernel_of, sdpa_kernel, set_attention_kernel

SIZE, LATENT = TINY_FRAME_SIZE, TINY_FRAME_SIZE // 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_unet_clip")
    write_tiny_hallo_unet(folder, seed=5)
    return folder


@pytest.fixture(scope="module")
def models(root):
    return load_unet_models(root)


def _inputs(models, frames=16, per_frame_masks=False, seed=0) -> ClipInputs:
    g = torch.Generator().manual_seed(seed)
    reference = torch.rand(3, SIZE, SIZE, generator=g) * 2 - 1

    def pyramid():
        levels = [torch.rand((LATENT >> level) ** 2, generator=g) for level in range(4)]
        return [m.repeat(frames, 1) for m in levels] if per_frame_masks else levels

    return ClipInputs(
        reference_latents=encode_frames(models.vae, motion_frame_pixels(reference, None)),
        face_embedding=torch.randn(1, 512, generator=g),
        face_region=torch.zeros(1, 3, SIZE, SIZE).index_fill_(2, torch.arange(16, 48), 1.0),
        full_mask=pyramid(), face_mask=pyramid(), lip_mask=pyramid(),
        audio_windows=torch.randn(1, frames, 5, 12, 32, generator=g),
        motion_scale=(1.0, 0.8, 1.2),
    )


def test_two_step_clip_runs_and_reports_progress(models):
    prepared = prepare_clip(models, _inputs(models))
    steps = []
    noise = torch.randn(1, 4, 16, LATENT, LATENT, generator=torch.Generator().manual_seed(1))
    latents = denoise_clip(models, prepared, noise, steps=2, cfg_scale=3.5, callback=steps.append)
    assert latents.shape == (1, 4, 16, LATENT, LATENT) and torch.isfinite(latents).all()
    assert [s["timestep"] for s in steps] == [999, 499] and steps[1]["denoised"].shape == latents.shape
    frames = decode_latents(models.vae, latents)
    assert frames.shape == (1, 3, 16, SIZE, SIZE) and frames.dtype == torch.float32
    # The official static masks given once per frame are the same conditioning.
    again = prepare_clip(models, _inputs(models, per_frame_masks=True))
    assert torch.equal(denoise_clip(models, again, noise, steps=2), latents)


def test_callback_can_stop_sampling(models):
    prepared = prepare_clip(models, _inputs(models))

    class Stop(Exception):
        pass

    def cancel(info):
        raise Stop

    with pytest.raises(Stop):
        denoise_clip(models, prepared, torch.randn(1, 4, 16, LATENT, LATENT), steps=3, callback=cancel)


def test_cfg_one_runs_the_conditional_rows_only(root):
    exact = load_unet_models(root, dtype=torch.float64)  # the same function: equal to float64 rounding
    inputs = _inputs(exact, seed=2)
    x = torch.randn(1, 4, 16, LATENT, LATENT, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        both = exact.networks.denoiser(torch.cat([x, x]), 666, prepare_clip(exact, inputs, 3.5).conditioning)
        cond = exact.networks.denoiser(x, 666, prepare_clip(exact, inputs, 1.0).conditioning)
    assert torch.allclose(cond, both[1:], atol=1e-10, rtol=0)
    assert not torch.allclose(cond, both[:1], atol=1e-3)
    with pytest.raises(InputError, match="another cfg"):
        denoise_clip(exact, prepare_clip(exact, inputs, 1.0), x, steps=1, cfg_scale=3.5)


def test_attention_kernel_is_per_model(models):
    denoiser, reference = models.networks.denoiser, models.networks.reference_net
    assert attention_kernel_of(denoiser).__name__ == "sdpa"
    attentions = [m for m in denoiser.modules() if isinstance(m, Attention)]
    math = sdpa_kernel("math")
    try:
        assert set_attention_kernel(denoiser, math) == len(attentions)  # every attention, motion ones included
        assert all(m.processor.kernel is math for m in attentions)
        assert attention_kernel_of(reference).__name__ == "sdpa"  # the other model keeps its own
    finally:
        set_attention_kernel(denoiser, attention_kernel_of(reference))


def test_input_errors_are_one_line(models):
    inputs = _inputs(models)
    inputs.full_mask = [m[:-1] for m in inputs.full_mask]
    with pytest.raises(InputError, match="mask level 0"):
        prepare_clip(models, inputs)
    inputs = _inputs(models)
    inputs.audio_tokens = torch.zeros(1, 16, 4, 32)
    with pytest.raises(InputError, match="either audio windows or audio tokens"):
        prepare_clip(models, inputs)
    inputs = _inputs(models)
    inputs.motion_scale = (1.0, 1.0)
    with pytest.raises(InputError, match="3 weights"):
        prepare_clip(models, inputs)


def test_motion_frames_and_hallo2_pixel_drop():
    reference = torch.rand(3, 8, 8) * 2 - 1
    first = motion_frame_pixels(reference, None)
    assert first.shape == (3, 3, 8, 8) and all(torch.equal(row, reference) for row in first)
    previous = torch.rand(3, 16, 8, 8)
    later = motion_frame_pixels(reference, previous)
    assert torch.equal(later[1:], previous[:, 14:].transpose(0, 1) * 2 - 1) and torch.equal(later[0], reference)
    face = torch.zeros(3, 8, 8)
    face[:, 2:4, 2:4] = 0.5
    hallo2 = MotionOptions(pixel_dropout=0.25, protect_face=True)
    dropped = augment_motion_frames(later[1:], hallo2, torch.Generator().manual_seed(3), face.bool().any(0))
    uniform = torch.rand(8, 8, generator=torch.Generator().manual_seed(3))  # the official draw: rand(H, W)
    keep = (uniform > 0.25) | (face[0] > 0)
    assert torch.equal(dropped, later[1:] * keep)
    assert bool((dropped[:, :, 2:4, 2:4] == later[1:, :, 2:4, 2:4]).all())
