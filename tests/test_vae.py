"""The CogVideoX VAE: SAT key mapping, loading from every source, golden numbers of the official VAE, errors."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLCogVideoX
from safetensors.torch import load_file, save_file

from hallo_core.errors import InputError, ModelFileError
from hallo_core.hallo3.vae import LATENT_SCALE, CogVideoXVAE, latent_frame_count, pixel_frame_count
from hallo_core.hallo3.vae_checkpoint import (
    _select_vae,
    diffusers_to_sat_key,
    infer_vae_config,
    load_vae,
    sat_to_diffusers_key,
    write_tiny_sat_vae,
    write_vae_safetensors,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "vae"
GOLDEN = json.loads((FIXTURES / "cogvideox_vae_tiny.json").read_text())
TOL = GOLDEN["tolerance"]


def golden_state():
    """The golden weights with official (SAT) names, in float32."""
    return {k: v.float() for k, v in load_file(FIXTURES / "cogvideox_vae_tiny.weights.safetensors").items()}


@pytest.fixture(scope="module")
def golden_sat_file(tmp_path_factory):
    """The golden weights written the way the official 3d-vae.pt is: torch.save({"state_dict": {...}})."""
    path = tmp_path_factory.mktemp("golden") / "3d-vae.pt"
    torch.save({"state_dict": golden_state()}, path)
    return path


@pytest.fixture(scope="module")
def golden_vae(golden_sat_file):
    return load_vae(golden_sat_file, dtype=torch.float32)


@pytest.fixture(scope="module")
def io():
    return load_file(FIXTURES / "cogvideox_vae_tiny.io.safetensors")


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "cogvideox-5b-i2v-sat" / "vae" / "3d-vae.pt"
    write_tiny_sat_vae(path, seed=3)
    return path


# --------------------------------------------------------------------------------------------------------------------
# key names and configuration of the full-size VAE

def full_official_keys():
    keys = json.loads((FIXTURES / "cogvideox_vae_full_sat_keys.json").read_text())["keys"]
    return {k: tuple(shape) for k, shape in keys.items()}


def test_sat_mapping_of_full_vae_is_complete_and_bijective():
    with torch.device("meta"):
        model = AutoencoderKLCogVideoX(block_out_channels=(128, 256, 256, 512), layers_per_block=3, latent_channels=16)
    diffusers_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = full_official_keys()
    assert len(official) == len(diffusers_shapes) == 436

    to_sat = {diffusers_to_sat_key(k, 4): shape for k, shape in diffusers_shapes.items()}
    assert to_sat == official  # every diffusers weight has its official name and shape, and nothing else exists
    back = {sat_to_diffusers_key(k, 4) for k in official}
    assert back == set(diffusers_shapes)
    assert sat_to_diffusers_key("decoder.up.0.block.3.nin_shortcut.weight", 4) == \
        "decoder.up_blocks.3.resnets.3.conv_shortcut.weight"
    assert sat_to_diffusers_key("encoder.mid.block_2.conv1.conv.bias", 4) == \
        "encoder.mid_block.resnets.1.conv1.conv.bias"


def test_loader_consumes_exactly_the_official_full_keys():
    official = full_official_keys()
    tensors = {k: torch.empty(shape, device="meta") for k, shape in official.items()}
    tensors["loss.discriminator.main.0.weight"] = torch.empty(3, device="meta")  # dropped like the official loader
    weights = _select_vae("3d-vae.pt", tensors, {})
    config = infer_vae_config(weights.shapes)
    assert config["block_out_channels"] == (128, 256, 256, 512)
    assert (config["layers_per_block"], config["latent_channels"], config["temporal_compression_ratio"]) == (3, 16, 4)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in AutoencoderKLCogVideoX(**config).state_dict().items()}
    assert weights.shapes == expected
    assert sorted(weights.stored_names.values()) == sorted(official)


def test_vae_keys_are_found_inside_the_hallo3_container():
    official = full_official_keys()
    tensors = {"first_stage_model." + k: torch.empty(s, device="meta") for k, s in official.items()}
    tensors["model.diffusion_model.transformer.layers.0.attention.dense.weight"] = torch.empty(4, 4, device="meta")
    tensors["conditioner.embedders.0.transformer.encoder.block.0.layer.0.SelfAttention.q.weight"] = torch.empty(1)
    weights = _select_vae("mp_rank_00_model_states.pt", tensors, {})
    assert len(weights.shapes) == 436
    assert infer_vae_config(weights.shapes)["block_out_channels"] == (128, 256, 256, 512)


# --------------------------------------------------------------------------------------------------------------------
# the official numbers

def test_chunked_decode_matches_the_official_vae(golden_vae, io):
    raw = golden_vae.decode_raw(io["decode.latents"])
    assert raw.shape == io["decode.raw"].shape == (1, 3, 49, 16, 24)
    assert (raw - io["decode.raw"]).abs().max() < TOL


def test_decode_gives_official_pixels_and_chunking_matters(golden_vae, io):
    # The first chunk is latent frames [0:3] -> pixel frames [0:9]; the second [3:5] -> [9:17].
    pixels = golden_vae.decode(io["decode.latents"][:, :, :3])
    assert pixels.dtype == torch.float32
    assert (pixels - ((io["decode.raw"][:, :, :9] + 1) / 2).clamp(0, 1)).abs().max() < TOL
    # One decoder pass over latent frames [0:5] gives other numbers than the official chunks.
    one_shot, _ = golden_vae.model.decoder(io["decode.latents"][:, :, :5] / LATENT_SCALE)
    assert (one_shot - io["decode.raw"][:, :, :17]).abs().max() > 0.1


@pytest.mark.parametrize("frames", [49, 3, 1])
def test_encode_posterior_matches_the_official_vae(golden_vae, io, frames):
    pixels = io["decode.raw"].clamp(-1, 1)[:, :, :frames]
    posterior = golden_vae.posterior(pixels)
    moments = io[f"encode.moments_{frames}"]
    assert posterior.mean.shape == (1, 16, latent_frame_count(frames), 2, 3)
    assert (posterior.mean - moments[:, :16]).abs().max() < TOL
    assert (posterior.logvar - moments[:, 16:].clamp(-30, 20)).abs().max() < TOL
    assert (golden_vae.encode_mean(pixels) - LATENT_SCALE * moments[:, :16]).abs().max() < TOL


def test_encode_sample_matches_the_official_sample_for_the_same_cpu_seed(golden_vae, io):
    pixels = io["decode.raw"].clamp(-1, 1)[:, :, :3]
    latents = golden_vae.encode(pixels, torch.Generator().manual_seed(1234))
    assert (latents - io["encode.sample_3"]).abs().max() < TOL


def test_encode_is_reproducible_and_depends_on_the_seed(golden_vae, io):
    pixels = io["decode.raw"].clamp(-1, 1)[:, :, :3]
    first = golden_vae.encode(pixels, torch.Generator().manual_seed(7))
    again = golden_vae.encode(pixels, torch.Generator().manual_seed(7))
    other = golden_vae.encode(pixels, torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-3
    with pytest.raises(TypeError):
        golden_vae.encode(pixels, None)


# --------------------------------------------------------------------------------------------------------------------
# the tiny VAE and the other sources

def test_tiny_sat_vae_round_trips_frame_counts(tiny_file):
    vae = load_vae(tiny_file.parents[2], dtype=torch.float32)  # found from the pretrained_models folder
    assert isinstance(vae, CogVideoXVAE) and vae.tiling is False
    assert (vae.spatial_compression, vae.temporal_compression, vae.latent_channels) == (8, 4, 16)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(1, 3, 49, 32, 48, generator=generator) * 2 - 1
    latents = vae.encode(pixels, generator)
    assert latents.shape == (1, 16, 13, 4, 6)  # 8x in space, 4x in time (1+4k -> 1+k), 16 channels
    small = pixels[:, :, :, :16, :24]
    decoded = vae.decode(vae.encode(small[:, :, :9], generator))  # 9 frames -> 3 latent frames -> 9 frames
    assert decoded.shape == (1, 3, 9, 16, 24)
    assert 0.0 <= decoded.min() and decoded.max() <= 1.0
    one = vae.encode(small[:, :, :3], generator)
    assert one.shape == (1, 16, 1, 2, 3)
    assert vae.decode(one).shape == (1, 3, 1, 16, 24)


def test_safetensors_and_diffusers_folder_load_the_same_vae(golden_vae, io, tmp_path):
    latents = io["decode.latents"][:, :, :1]
    reference = golden_vae.decode_raw(latents)

    single = tmp_path / "cogvideox_5b_vae_fp32.safetensors"
    write_vae_safetensors(golden_vae, single, dtype=torch.float32)
    assert json.loads(load_config(single))["block_out_channels"] == [32, 32, 32, 64]
    assert torch.equal(load_vae(single, dtype=torch.float32).decode_raw(latents), reference)

    golden_vae.model.save_pretrained(tmp_path / "diffusers" / "vae")
    from_folder = load_vae(tmp_path / "diffusers", dtype=torch.float32)
    assert torch.equal(from_folder.decode_raw(latents), reference)

    # A state dict with official names converts too.
    sat = tmp_path / "from_sat.safetensors"
    weights = load_file(FIXTURES / "cogvideox_vae_tiny.weights.safetensors")
    write_vae_safetensors(weights, sat, dtype=torch.float32)
    assert torch.equal(load_vae(sat, dtype=torch.float32).decode_raw(latents), reference)


def load_config(path):
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        return f.metadata()["config"]


def test_load_in_bf16_and_tiling_option(golden_sat_file, io):
    vae = load_vae(golden_sat_file, dtype=torch.bfloat16, tiling=True)
    assert all(p.dtype == torch.bfloat16 for p in vae.parameters())
    assert vae.model.use_tiling
    pixels = vae.decode(io["decode.latents"][:, :, :1, :1, :1])
    assert pixels.dtype == torch.float32 and pixels.shape == (1, 3, 1, 8, 8)


def test_container_with_module_and_metadata_loads(tmp_path):
    module = {"first_stage_model." + k: v for k, v in golden_state().items()}
    module["model.diffusion_model.mixins.pos_embed.freqs_sin"] = torch.zeros(2, 2)
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": module, "dp_world_size": 1, "mp_world_size": 1, "global_steps": 10}, path)
    vae = load_vae(path, dtype=torch.float32)
    assert vae.model.config.block_out_channels == (32, 32, 32, 64)


# --------------------------------------------------------------------------------------------------------------------
# frame arithmetic and input checks

def test_frame_arithmetic():
    assert [latent_frame_count(f) for f in (1, 3, 5, 9, 49)] == [1, 1, 2, 3, 13]
    assert [pixel_frame_count(t) for t in (1, 3, 13)] == [1, 9, 49]
    assert all(pixel_frame_count(latent_frame_count(1 + 8 * k)) == 1 + 8 * k for k in range(7))
    with pytest.raises(InputError):
        pixel_frame_count(12)
    with pytest.raises(InputError):
        latent_frame_count(0)


def test_bad_inputs_raise_input_errors(golden_vae):
    with pytest.raises(InputError, match="divisible by 8"):
        golden_vae.encode_mean(torch.zeros(1, 3, 3, 20, 24))
    with pytest.raises(InputError, match=r"\(B, 3, F, H, W\)"):
        golden_vae.encode_mean(torch.zeros(3, 3, 16, 24))
    with pytest.raises(InputError, match="odd number"):
        golden_vae.decode(torch.zeros(1, 16, 2, 2, 3))


# --------------------------------------------------------------------------------------------------------------------
# bad files

def assert_one_line(error, path):
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    return message


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError) as error:
        load_vae(tmp_path / "nope.pt")
    assert "not found" in assert_one_line(error, tmp_path / "nope.pt")
    with pytest.raises(ModelFileError) as error:
        load_vae(tmp_path)
    assert "no CogVideoX VAE here" in assert_one_line(error, tmp_path)


def test_truncated_files(golden_sat_file, golden_vae, tmp_path):
    data = golden_sat_file.read_bytes()
    cut = tmp_path / "3d-vae.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError) as error:
        load_vae(cut)
    assert_one_line(error, cut)

    single = tmp_path / "vae.safetensors"
    write_vae_safetensors(golden_vae, single)
    data = single.read_bytes()
    single.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelFileError) as error:
        load_vae(single)
    assert_one_line(error, single)


def test_vae_with_a_missing_key_names_it(tmp_path):
    state = golden_state()
    del state["decoder.up.1.block.0.norm2.conv_y.conv.weight"]
    path = tmp_path / "3d-vae.pt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(ModelFileError) as error:
        load_vae(path)
    message = assert_one_line(error, path)
    assert "1 weights missing" in message and "decoder.up.1.block.0.norm2.conv_y.conv.weight" in message

    container = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"first_stage_model." + k: v for k, v in state.items()}}, container)
    with pytest.raises(ModelFileError) as error:
        load_vae(container)
    assert "first_stage_model.decoder.up.1.block.0.norm2.conv_y.conv.weight" in assert_one_line(error, container)


def test_vae_with_an_unknown_key_or_wrong_shape(tmp_path):
    state = golden_state()
    path = tmp_path / "extra.pt"
    torch.save({"state_dict": {**state, "encoder.extra.weight": torch.zeros(1)}}, path)
    with pytest.raises(ModelFileError) as error:
        load_vae(path)
    assert "encoder.extra.weight" in assert_one_line(error, path)

    state["decoder.conv_out.conv.bias"] = torch.zeros(4)
    path = tmp_path / "shape.pt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(ModelFileError) as error:
        load_vae(path)
    assert "decoder.conv_out.conv.bias has shape [4]" in assert_one_line(error, path)


def test_non_vae_checkpoints_are_refused(tmp_path):
    pt = tmp_path / "transformer.pt"
    torch.save({"module": {"model.diffusion_model.transformer.final_layernorm.weight": torch.ones(8)}}, pt)
    with pytest.raises(ModelFileError) as error:
        load_vae(pt)
    assert "does not hold a CogVideoX VAE" in assert_one_line(error, pt)

    st = tmp_path / "t5.safetensors"
    save_file({"encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(2, 2)}, st)
    with pytest.raises(ModelFileError) as error:
        load_vae(st)
    assert "does not hold a CogVideoX VAE" in assert_one_line(error, st)

    folder = tmp_path / "unet"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(ModelFileError) as error:
        load_vae(folder)
    assert "UNet2DConditionModel" in assert_one_line(error, folder)


def test_write_refuses_fp8(golden_vae, tmp_path):
    with pytest.raises(InputError):
        write_vae_safetensors(golden_vae, tmp_path / "x.safetensors", dtype=torch.float8_e4m3fn)



def _anonymous_memory():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024


def _peak_anonymous_growth(fn):
    """Run fn(); return its result and the peak growth of this process's anonymous memory meanwhile."""
    import ctypes
    import gc
    import threading
    import time

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so reusing it cannot hide a copy
    base, peak, done = _anonymous_memory(), [0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], _anonymous_memory())
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = fn()
    finally:
        done.set()
        watcher.join()
    return result, peak[0] - base


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssAnon from /proc (Linux, glibc)")
def test_loading_holds_the_weights_once(tmp_path):
    """Anonymous memory grows by about one copy of the weights (the file is memory-mapped, not read into memory)."""
    from hallo_core.hallo3.vae_checkpoint import tiny_sat_vae_state

    path = tmp_path / "3d-vae.pt"
    torch.save({"state_dict": tiny_sat_vae_state(0, (64, 64, 128, 256), 1)}, path)  # 119 MB in fp32
    vae, growth = _peak_anonymous_growth(lambda: load_vae(path, dtype=torch.float32))
    size = sum(p.numel() * p.element_size() for p in vae.parameters())
    assert size > 100e6
    assert growth < 1.3 * size
