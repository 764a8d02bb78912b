"""Loading Hallo / Hallo2 weights: official net.pth (strict, safe), our converted files, the SD VAE in every layout."""

import os
import re
from collections import OrderedDict

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

from hallo_core.dev.tiny_unet import TINY_FRAME_SIZE, random_net_state, tiny_config, write_tiny_hallo_unet
from hallo_core.errors import HalloError, ModelFileError, UnsafeCheckpointError
from hallo_core.hallo_unet.checkpoint import find_net_file, load_networks, load_unet_models
from hallo_core.hallo_unet.convert import convert_unet
from hallo_core.hallo_unet.vae import decode_latents, encode_frames, load_vae

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_unet")
    return root, write_tiny_hallo_unet(root, version="hallo2", seed=3)


def _one_line(error: HalloError) -> str:
    message = str(error)
    assert "\n" not in message
    return message


def test_tiny_set_loads_through_the_real_loader(tiny):
    root, paths = tiny
    assert paths["unet"] == os.path.join(root, "hallo2", "net.pth")
    raw = torch.load(paths["unet"], weights_only=True)
    assert isinstance(raw, OrderedDict) and {t.dtype for t in raw.values()} == {torch.float16}
    models = load_unet_models(root)  # pretrained_models/ root: hallo2/net.pth + sd-vae-ft-mse/
    nets = models.networks
    assert nets.version == "hallo2" and nets.config == tiny_config()
    state = {**{f"reference_unet.{k}": v for k, v in nets.reference_net.state_dict().items()},
             **{f"denoising_unet.{k}": v for k, v in nets.denoiser.state_dict().items()}}
    pe = ("denoising_unet.down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0."
          "attention_blocks.1.pos_encoder.pe")
    for name in (pe, "reference_unet.up_blocks.3.attentions.0.proj_in.weight"):
        assert torch.equal(state[name], raw[name].float())
    assert tuple(models.vae.config.block_out_channels) == (8,) * 4
    pixels = torch.rand(3, 3, TINY_FRAME_SIZE, TINY_FRAME_SIZE) * 2 - 1
    latents = encode_frames(models.vae, pixels)
    assert latents.shape == (3, 4, TINY_FRAME_SIZE // 8, TINY_FRAME_SIZE // 8)
    frames = decode_latents(models.vae, latents.transpose(0, 1)[None])
    assert frames.shape == (1, 3, 3, TINY_FRAME_SIZE, TINY_FRAME_SIZE) and 0 <= frames.min() <= frames.max() <= 1


def test_folder_layouts_resolve(tiny, tmp_path):
    root, paths = tiny
    assert find_net_file(root) == paths["unet"]
    assert find_net_file(os.path.join(root, "hallo2")) == paths["unet"]
    with pytest.raises(ModelFileError, match="hallo/net.pth"):
        find_net_file(root, version="hallo")
    with pytest.raises(ModelFileError, match="hf download"):
        find_net_file(tmp_path)


def _net(tmp_path, state, name="net.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_strict_key_set_refusals_are_one_line(tmp_path):
    state = random_net_state(tiny_config(), seed=1)
    missing = OrderedDict(state)
    missing.pop("denoising_unet.up_blocks.1.audio_modules.0.transformer_blocks.0.zero_conv_lip.bias")
    with pytest.raises(ModelFileError) as info:
        load_networks(_net(tmp_path, missing, "missing.pth"))
    assert "weights missing" in _one_line(info.value) and "zero_conv_lip.bias" in str(info.value)

    extra = OrderedDict(state)
    extra["denoising_unet.down_blocks.0.extra.weight"] = torch.zeros(2, dtype=torch.float16)
    with pytest.raises(ModelFileError, match="unexpected weight 'down_blocks.0.extra.weight'"):
        load_networks(_net(tmp_path, extra, "extra.pth"))

    stray = OrderedDict(state)
    stray["unet.conv_in.weight"] = torch.zeros(2, dtype=torch.float16)
    with pytest.raises(ModelFileError, match="unexpected weight 'unet.conv_in.weight'"):
        load_networks(_net(tmp_path, stray, "stray.pth"))

    reshaped = OrderedDict(state)
    reshaped["denoising_unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"] = torch.zeros(
        64, 7, dtype=torch.float16)
    with pytest.raises(ModelFileError, match="has shape") as info:
        load_networks(_net(tmp_path, reshaped, "shape.pth"))
    _one_line(info.value)


def test_truncated_and_foreign_files_are_refused(tmp_path, tiny):
    _, paths = tiny
    with open(paths["unet"], "rb") as f:
        data = f.read()
    truncated = tmp_path / "net.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError) as info:
        load_networks(truncated)
    _one_line(info.value)

    hallo3 = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"model.diffusion_model.mixins.patch_embed.proj.weight": torch.zeros(4, 4)},
                "global_steps": 1}, hallo3)
    with pytest.raises(ModelFileError, match="Hallo3 checkpoint") as info:
        load_networks(hallo3)
    _one_line(info.value)

    other = tmp_path / "other.safetensors"
    save_file({"conv_in.weight": torch.zeros(3)}, other)
    with pytest.raises(ModelFileError, match="no reference_unet"):
        load_networks(other)


class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_net_pth_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    state = OrderedDict([("imageproj.proj.weight", torch.zeros(2, dtype=torch.float16)),
                         ("imageproj.evil", _RunsACommand(marker))])
    path = _net(tmp_path, state)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_networks(path)
    assert "refused" in _one_line(info.value)
    assert not marker.exists()


def test_convert_round_trip(tiny, tmp_path):
    root, _ = tiny
    written = convert_unet(root, tmp_path, "fp16")
    assert [os.path.basename(p) for p in written] == ["hallo2_unet_fp16.safetensors", "sd_vae_ft_mse_fp16.safetensors"]
    official = load_networks(root)
    converted = load_networks(written[0])
    assert converted.version == "hallo2" and converted.config == official.config
    for name in ("reference_net", "denoiser", "face_locator", "image_proj", "audio_proj"):
        a, b = getattr(official, name).state_dict(), getattr(converted, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    vae_official, vae_converted = load_vae(root), load_vae(written[1])
    assert all(torch.equal(vae_official.state_dict()[k].half().float(), v)
               for k, v in vae_converted.state_dict().items())

    fp8 = convert_unet(os.path.join(root, "hallo2", "net.pth"), tmp_path / "fp8", "fp8_e4m3fn")[0]
    low = load_networks(fp8, fp8=True)
    linear = low.denoiser.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    assert linear.weight.dtype == torch.float8_e4m3fn and type(linear).__name__ == "CastingLinear"
    assert low.denoiser.conv_in.weight.dtype == torch.float32


# ---------------------------------------------------------------------------------------------------------------
# The SD VAE: official diffusers folder == ComfyUI single file with original LDM names (any prefix)

def _ldm_name(name: str, levels: int) -> str:
    """diffusers AutoencoderKL name -> original LDM (CompVis) name, for writing a ComfyUI-style test file."""
    rules = [
        (r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: f"encoder.down.{m[1]}.block.{m[2]}."),
        (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", lambda m: f"encoder.down.{m[1]}.downsample."),
        (r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
         lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}."),
        (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample."),
        (r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.", lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}."),
        (r"(encoder|decoder)\.mid_block\.attentions\.0\.", lambda m: f"{m[1]}.mid.attn_1."),
        (r"(encoder|decoder)\.conv_norm_out\.", lambda m: f"{m[1]}.norm_out."),
    ]
    for pattern, replace in rules:
        name = re.sub(pattern, replace, name)
    name = name.replace("conv_shortcut", "nin_shortcut").replace("attn_1.group_norm", "attn_1.norm")
    for ours, ldm in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
        name = name.replace(f"attn_1.{ours}.", f"attn_1.{ldm}.")
    return name


@pytest.fixture(scope="module")
def sd_vae(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae") / "sd-vae-ft-mse"
    vae = AutoencoderKL(block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=32)
    with torch.no_grad():
        for parameter in vae.parameters():
            parameter.add_(0.01 * torch.randn(parameter.shape))
    vae.save_pretrained(folder, safe_serialization=True)
    return folder, vae


@pytest.mark.parametrize("prefix", ["", "first_stage_model."])
def test_vae_single_ldm_file_equals_the_diffusers_folder(sd_vae, tmp_path, prefix):
    folder, vae = sd_vae
    state = {}
    for name, tensor in vae.state_dict().items():
        if re.search(r"attentions\.0\.to_(q|k|v|out\.0)\.weight$", name):
            tensor = tensor[:, :, None, None]  # LDM keeps the mid attention as 1x1 convolutions
        state[prefix + _ldm_name(name, 4)] = tensor.contiguous()
    state[prefix + "loss.logvar"] = torch.zeros(())  # training leftovers some files carry
    single = tmp_path / "vae-ft-mse-840000-ema-pruned.safetensors"
    save_file(state, single)
    from_folder, from_file = load_vae(folder), load_vae(single)
    a, b = from_folder.state_dict(), from_file.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert tuple(from_file.config.block_out_channels) == (32,) * 4
    pixels = torch.rand(1, 3, 32, 32)
    assert torch.equal(encode_frames(from_folder, pixels), encode_frames(from_file, pixels))


def test_vae_refusals(sd_vae, tmp_path):
    _, vae = sd_vae
    pickled = tmp_path / "vae.ckpt"
    torch.save(vae.state_dict(), pickled)
    with pytest.raises(ModelFileError, match="safetensors only"):
        load_vae(pickled)
    partial = tmp_path / "partial.safetensors"
    state = {_ldm_name(k, 4): v.contiguous() for k, v in vae.state_dict().items() if "decoder.conv_out" not in k}
    save_file(state, partial)
    with pytest.raises(ModelFileError, match="decoder.conv_out.weight' is missing"):
        load_vae(partial)
    partial_attention = tmp_path / "partial_attention.safetensors"
    save_file({_ldm_name(k, 4): v.contiguous() for k, v in vae.state_dict().items() if "mid_block.attentions.0.to_v"
               not in k or "encoder" in k}, partial_attention)
    with pytest.raises(ModelFileError, match="weights missing"):
        load_vae(partial_attention)
    ldm = {_ldm_name(k, 4): v.contiguous() for k, v in vae.state_dict().items()}
    for extra, message in (("encoder.down.0.block.0.extra.weight", "unexpected weight"),
                           ("encoder.extra.weight", "no diffusers name")):
        unknown = tmp_path / "unknown.safetensors"
        save_file({**ldm, extra: torch.zeros(1)}, unknown)
        with pytest.raises(ModelFileError, match=message):
            load_vae(unknown)
