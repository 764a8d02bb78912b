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


_RENDERS = {}


def _render(tiny_models, portraits_dir, speech_file, memory, settings=RenderSettings(steps=2, seed=11)):
    key = (str(tiny_models), memory, settings)  # one render per preset and settings for the whole module
    if key not in _RENDERS:
        pipeline = tiny_backbone(tiny_models, memory)
        identity = pipeline.prepare_identity(str(portraits_dir / "0003.jpg"))
        speech = pipeline.prepare_speech(str(speech_file), separate_vocals=False)
        frames = torch.cat([clip.frames for clip in render_all(pipeline, identity, speech, "a woman", settings)])
        _RENDERS[key] = frames, pipeline.models
    return _RENDERS[key]


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


def test_host_copy_is_one_buffer_and_moves_are_exact():
    """A model leaves the device by pointing at its host copy (no copy) and comes back with the same weights."""
    from hallo_core.memory.pinned import ModuleHost

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.LayerNorm(7), torch.nn.Linear(7, 3))
    model.register_buffer("table", torch.arange(6.0))
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    host = ModuleHost(model)
    assert len(host.slots) == 7 and host.nbytes >= sum(t.numel() * 4 for t in before.values())
    for tensor in model.state_dict(keep_vars=True).values():  # "on the device": storage of its own
        tensor.data = tensor.data.clone()
    host.offload()
    start, end = host.copy.buffer.data_ptr(), host.copy.buffer.data_ptr() + host.nbytes
    assert all(start <= tensor.data_ptr() < end for tensor in model.state_dict().values())
    assert all(torch.equal(model.state_dict()[name], value) for name, value in before.items())
    host.onload(torch.device("cpu"))
    assert all(torch.equal(model.state_dict()[name], value) for name, value in before.items())


def test_balanced_keeps_a_model_while_the_next_phase_fits_and_evicts_otherwise():
    from hallo_core.memory.residency import LocalModels

    def run(free_bytes):
        loaders = {name: (lambda device: torch.nn.Linear(256, 256)) for name in ("transformer", "vae")}
        models = LocalModels(loaders, "cpu", keep_while_fits=True, working_memory={"vae": 1 << 20},
                             free_memory=lambda: free_bytes)
        for name in ("transformer", "vae", "transformer", "vae"):
            with models.use(name):
                pass
        return models

    roomy = run(64 << 30)
    assert roomy.evictions == [] and roomy.resident == {"transformer", "vae"}
    assert roomy.residency_log[-1] == {"transformer", "vae"}
    tight = run(1 << 20)  # not even the VAE's working memory is free: every other model leaves first
    assert tight.evictions == ["transformer", "vae", "transformer"]
    assert max(len(resident) for resident in tight.residency_log) == 1


def test_streamed_reference_network_and_t5_give_the_same_numbers(tiny_models):
    """The 12gb preset streams the reference network (whose norm1 runs before its block) and T5's blocks too."""
    from hallo_core.hallo3.checkpoint import load_reference_net
    from hallo_core.hallo3.loaders import prepare_text_encoder
    from hallo_core.hallo3.model_files import ModelFiles
    from hallo_core.hallo3.text_encoder import load_text_encoder
    from hallo_core.memory.block_streaming import blocks_that_fit

    reference = load_reference_net(tiny_models, dtype=torch.float32)
    latent = torch.randn(1, 1, 16, reference.config.latent_height, reference.config.latent_width)
    with torch.no_grad():
        resident = reference(latent)
        streamer = BlockStreamer(reference.transformer_blocks, "cpu", owner=reference, entry_children=("norm1",))
        streamed = reference(latent)
    assert all(torch.equal(a, b) for a, b in zip(resident, streamed))
    assert not streamer.ready  # the last block (only its norm1 ran) was dropped when the forward ended

    encoder = load_text_encoder(ModelFiles.from_pretrained_dir(tiny_models).text_encoder, dtype=torch.float32)
    exact = encoder.encode("a woman talking").clone()
    encoder.clear_cache()
    blocks = encoder.model.encoder.block
    keep = blocks_that_fit(blocks, 3.5 * sum(p.numel() * 4 for p in blocks[0].parameters()))
    assert keep == 1  # room for one kept block beside the two that stream through
    prepare_text_encoder(encoder, "cpu", stream_blocks=True, budget=None)
    assert torch.equal(encoder.encode("a woman talking"), exact) and encoder.block_streamer.loads == len(blocks)


def test_tiled_decode_with_one_tile_is_the_official_decode():
    from hallo_core.dev.bench_support import random_vae

    vae = random_vae("tiny")
    latents = torch.randn(1, 16, 5, 8, 12, generator=torch.Generator().manual_seed(0))
    official = vae.decode_raw(latents)
    with torch.no_grad():
        assert torch.equal(vae._tiled_decode(latents / 0.7, splits=1), official)
    vae.decode_tiles = True
    tiled = vae.decode_raw(latents)
    assert tiled.shape == official.shape and not torch.equal(tiled, official)


def test_12gb_preset_differs_from_low_only_by_the_tiled_decode(tiny_models, portraits_dir, speech_file):
    """On a CPU the 12gb preset's streaming is off (CUDA only) and its fp8 latents are low's; the tiled VAE decode
    changes the frames by what the tiny random VAE gives (docs/benchmarks.md states the measured figures)."""
    low, _ = _render(tiny_models, portraits_dir, speech_file, "low")
    small, _ = _render(tiny_models, portraits_dir, speech_file, "12gb")
    full, _ = _render(tiny_models, portraits_dir, speech_file, "full")
    vs_low = (small - low).abs()
    # The random tiny VAE's GroupNorm statistics differ much between tiles of 5 x 7 latents: some pixels saturate
    # (max 1.0); measured here: mean 0.045, 0.9 % of the values off by more than 0.25 (docs/benchmarks.md).
    assert 0 < vs_low.mean() < 0.06 and (vs_low > 0.25).float().mean() < 0.02
    assert (small - full).abs().mean() < 0.06


def test_streamed_blocks_leave_their_fp8_scales_with_the_model():
    """Row-wise fp8 scales are buffers: they move with the model while the block's matrices stream."""
    from hallo_core.memory.pinned import _module_tensors
    from hallo_core.memory.weight_casting import enable_fp8_matmul

    model = torch.nn.Module()
    model.transformer_blocks = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(32, 32)) for _ in range(3)])
    model.head = torch.nn.Linear(32, 16)
    enable_fp8_matmul(model)
    streamer = BlockStreamer(model.transformer_blocks, "cpu", keep=1)
    moved = {(type(owner).__name__, name) for owner, _, name, _ in _module_tensors(model)}
    assert ("RowwiseFp8Linear", "weight_scale") in moved and ("Linear", "weight") in moved
    streamed_weights = {id(block[0].weight) for block in model.transformer_blocks[1:]}
    assert not streamed_weights & {id(t) for *_, t in _module_tensors(model)}
    assert list(streamer.streamed) == [1, 2]
