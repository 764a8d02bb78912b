"""Memory presets and speed options: what changes numbers and what must not (tiny models, CPU)."""

import pytest
import torch
from conftest import cut_audio, render_all, tiny_backbone

from hallo_core.hallo3.backbone import Hallo3Settings as RenderSettings
from hallo_core.hallo3.checkpoint import fp8_storage, load_transformer
from hallo_core.memory.block_streaming import BlockStreamer
from hallo_core.memory.weight_casting import CastingLinear, enable_weight_casting

LARGE = {"transformer", "reference_net", "vae", "text_encoder"}


@pytest.fixture(scope="module")
def speech_file(portraits_dir, tmp_path_factory):
    return cut_audio(portraits_dir / "0003.wav", 2.5, tmp_path_factory.mktemp("audio") / "speech.wav")


def _render(tiny_models, portraits_dir, speech_file, memory, settings=RenderSettings(steps=2, seed=11)):
    pipeline = tiny_backbone(tiny_models, memory)
    identity = pipeline.prepare_identity(str(portraits_dir / "0003.jpg"))
    speech = pipeline.prepare_speech(str(speech_file), separate_vocals=False)
    frames = torch.cat([clip.frames for clip in render_all(pipeline, identity, speech, "a woman", settings)])
    return frames, pipeline.models


def test_balanced_equals_full_and_keeps_one_large_model_resident(tiny_models, portraits_dir, speech_file):
    full, full_models = _render(tiny_models, portraits_dir, speech_file, "full")
    balanced, balanced_models = _render(tiny_models, portraits_dir, speech_file, "balanced")
    assert torch.equal(full, balanced)
    most_at_once = lambda models: max(len(resident & LARGE) for resident in models.residency_log)
    assert most_at_once(full_models) >= 3  # full: models stay resident after their phase
    assert {"transformer", "vae", "text_encoder"} <= full_models.resident
    assert most_at_once(balanced_models) == 1  # balanced: one large model at a time
    assert balanced_models.load_counts["transformer"] == 1 and balanced_models.load_counts["vae"] == 1


def test_low_preset_stores_fp8_and_stays_close(tiny_models, portraits_dir, speech_file):
    full, _ = _render(tiny_models, portraits_dir, speech_file, "full")
    low, models = _render(tiny_models, portraits_dir, speech_file, "low")
    with models.use("transformer") as transformer:
        weight = transformer.transformer_blocks[0].ff.net[0].proj
        assert weight.weight.dtype == torch.float8_e4m3fn and isinstance(weight, CastingLinear)
    difference = (low - full).abs()
    assert 0 < difference.max() < 0.5 and difference.mean() < 0.05  # fp8 weights change numbers a little


def _transformer_and_inputs(tiny_models):
    """The tiny transformer, a call's inputs (latents, timesteps, text, audio, face) and reference tokens."""
    model = load_transformer(tiny_models, dtype=torch.float32)
    config = model.config
    torch.manual_seed(0)
    latents = torch.randn(2, 3, config.in_channels, config.latent_height, config.latent_width)
    inputs = (latents, torch.tensor([500.0, 500.0]), torch.randn(2, config.text_length, config.text_embed_dim),
              model.encode_audio(torch.randn(2, 9, 5, 12, 32)), model.encode_face(torch.randn(2, 512)))
    reference = [torch.randn(1, config.tokens_per_frame, config.hidden_size) for _ in range(config.num_layers)]
    return model, inputs, reference


def test_block_streaming_gives_the_same_output_as_resident_weights(tiny_models):
    model, inputs, reference = _transformer_and_inputs(tiny_models)
    config = model.config
    with torch.no_grad():
        kv = model.reference_key_values(reference)
        resident = model(*inputs, kv)
        streamer = BlockStreamer(model.transformer_blocks, "cpu")
        model.block_streamer = streamer
        streamed_kv = model.reference_key_values(reference)
        streamed = model(*inputs, streamed_kv)
    assert torch.equal(resident, streamed)
    assert streamer.loads == 2 * config.num_layers  # each block copied in for the K/V pass and for the forward
    assert not streamer.ready  # and dropped again after use


def test_compiled_blocks_keep_block_streaming_outside_the_graph(tiny_models):
    """The low preset with --compile: the streamer's hooks must run eagerly around each compiled block (traced into
    the graph, their weight moves failed on CUDA); the output equals the resident, uncompiled model's."""
    model, inputs, reference = _transformer_and_inputs(tiny_models)
    config = model.config
    with torch.no_grad():
        kv = model.reference_key_values(reference)
        resident = model(*inputs, kv)
        model.block_streamer = streamer = BlockStreamer(model.transformer_blocks, "cpu")
        model.compile_blocks(backend="eager")
        traced_hooks = []
        for block in model.transformer_blocks:
            block.register_forward_pre_hook(lambda *_: traced_hooks.append(torch.compiler.is_compiling()))
        outputs = [model(*inputs, kv) for _ in range(2)]
    assert all(torch.allclose(out, resident, atol=1e-5) for out in outputs)
    assert traced_hooks == [False] * (2 * config.num_layers)  # every hook ran, each outside the compiled graph
    assert streamer.loads == 2 * config.num_layers and not streamer.ready


def test_step_cache_skips_steps_and_changes_little(tiny_models, portraits_dir, speech_file):
    exact, _ = _render(tiny_models, portraits_dir, speech_file, "full", RenderSettings(steps=8, seed=11))
    cached, _ = _render(tiny_models, portraits_dir, speech_file, "full",
                        RenderSettings(steps=8, seed=11, step_cache=0.5))
    assert not torch.equal(exact, cached)
    off, _ = _render(tiny_models, portraits_dir, speech_file, "full", RenderSettings(steps=8, seed=11, step_cache=0.0))
    assert torch.equal(exact, off)


def test_weight_casting_upcasts_fp8_layers_only():
    layer = torch.nn.Linear(4, 3)
    plain = torch.nn.Linear(4, 3)
    layer.weight.data = layer.weight.data.to(torch.float8_e4m3fn)
    model = torch.nn.Sequential(layer, plain)
    assert enable_weight_casting(model) == 1
    assert type(model[0]) is CastingLinear and type(model[1]) is torch.nn.Linear
    x = torch.randn(2, 4)
    assert torch.allclose(model[0](x), x @ layer.weight.float().T + layer.bias)
    assert fp8_storage(torch.bfloat16)("transformer_blocks.0.ff.net.0.proj.weight", (8, 4)) == torch.float8_e4m3fn
    assert fp8_storage(torch.bfloat16)("transformer_blocks.0.norm1.norm.weight", (8,)) == torch.bfloat16
    assert fp8_storage(torch.bfloat16)("patch_embed.proj.weight", (8, 4, 2, 2)) == torch.bfloat16


def test_separate_guidance_with_equal_scales_is_the_official_guidance(tiny_models, portraits_dir, speech_file):
    from hallo_core.hallo3.denoiser import SeparateGuidance

    official, _ = _render(tiny_models, portraits_dir, speech_file, "full", RenderSettings(steps=3, seed=5))
    equal, _ = _render(tiny_models, portraits_dir, speech_file, "full",
                       RenderSettings(steps=3, seed=5, guidance=SeparateGuidance(3.5, 3.5)))
    assert (official - equal).abs().max() < 1e-4  # u + s(t-u) + s(f-t) == u + s(f-u): only rounding differs
    louder, _ = _render(tiny_models, portraits_dir, speech_file, "full",
                        RenderSettings(steps=3, seed=5, guidance=SeparateGuidance(3.5, 6.0, reference=2.0)))
    assert (official - louder).abs().max() > 1e-3


def test_carry_latents_changes_the_continuation_only(tiny_models, portraits_dir, speech_file):
    from hallo_core.render.motion import MotionOptions

    official, _ = _render(tiny_models, portraits_dir, speech_file, "full", RenderSettings(steps=2, seed=9))
    carried, _ = _render(tiny_models, portraits_dir, speech_file, "full",
                         RenderSettings(steps=2, seed=9, motion=MotionOptions(carry_latents=True)))
    assert torch.equal(official[:47], carried[:47])  # clip 0 starts from the portrait either way
    assert not torch.equal(official[47:], carried[47:])


def test_fp8_matmul_stays_close_to_the_exact_layer():
    from hallo_core.memory.weight_casting import Fp8MatmulLinear, enable_fp8_matmul

    torch.manual_seed(0)
    model = torch.nn.Module()
    model.transformer_blocks = torch.nn.ModuleList([torch.nn.Linear(64, 48), torch.nn.Linear(10, 48)])
    x = torch.randn(3, 7, 64)
    exact = model.transformer_blocks[0](x)
    assert enable_fp8_matmul(model) == 1  # 10 input features: not a multiple of 16, left exact
    layer = model.transformer_blocks[0]
    assert isinstance(layer, Fp8MatmulLinear) and layer.weight.dtype == torch.float8_e4m3fn
    fast = layer(x)
    relative = (fast - exact).abs().max() / exact.abs().max()
    assert 0 < relative < 0.1
