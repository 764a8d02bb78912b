"""`make-tiny-models`: a complete set of tiny random-weight models, in the official layout and file formats.

Every file `generate` (and the ComfyUI nodes) reads is written, with the official names and containers - the SAT
DeepSpeed `.pt` of the transformers, the SAT VAE `.pt`, Hugging Face folders for T5 and wav2vec2, InsightFace ONNX
files, the MDX separator ONNX - so the whole real loading and rendering path runs on a CPU in seconds to minutes.
The weights are random: the videos are noise, the code path is the real one.
"""

from __future__ import annotations

import json
import os

from ..errors import InputError
from ..hallo3.vae_checkpoint import write_tiny_sat_vae
from .tiny_frontends import write_tiny_face_models, write_tiny_t5, write_tiny_vocal_separator, write_tiny_wav2vec
from .tiny_transformer import tiny_config, write_tiny_hallo3
from .tiny_unet import write_tiny_hallo_unet

WINDOW = 5  # wav2vec frames per video frame in Hallo3's audio windows


def make_tiny_models(root: str | os.PathLike, seed: int = 0, backbones=("hallo3",)) -> dict[str, str]:
    """Write `root/` in the `pretrained_models/` layout of `backbones` (hallo3, hallo, hallo2: the official downloads'
    layouts share their front-end folders); returns what was written where."""
    unknown = sorted(set(backbones) - {"hallo3", "hallo", "hallo2"})
    if unknown or not backbones:
        raise InputError(f"unknown backbone {', '.join(unknown) or '(none)'}; choose hallo3, hallo, hallo2 or all")
    root = os.fspath(root)
    os.makedirs(root, exist_ok=True)
    written = {
        "wav2vec": write_tiny_wav2vec(os.path.join(root, "wav2vec", "wav2vec2-base-960h"), seed=seed),
        "face_analysis": write_tiny_face_models(os.path.join(root, "face_analysis", "models"), seed=seed),
        "audio_separator": write_tiny_vocal_separator(os.path.join(root, "audio_separator", "Kim_Vocal_2.onnx"),
                                                      seed=seed),
    }
    written.update(write_tiny_upscaler_models(root, seed=seed))
    wav2vec = _config(os.path.join(root, "wav2vec", "wav2vec2-base-960h"))
    audio_input_dim = WINDOW * wav2vec["num_hidden_layers"] * wav2vec["hidden_size"]
    if "hallo3" in backbones:
        written["t5"] = write_tiny_t5(os.path.join(root, "t5-v1_1-xxl"), seed=seed)
        vae = os.path.join(root, "cogvideox-5b-i2v-sat", "vae", "3d-vae.pt")
        os.makedirs(os.path.dirname(vae), exist_ok=True)
        write_tiny_sat_vae(vae, seed=seed)
        written["vae"] = vae
        text_dim = _config(os.path.join(root, "t5-v1_1-xxl"))["d_model"]
        written["hallo3"] = write_tiny_hallo3(root, tiny_config(text_dim, audio_input_dim), seed=seed)
    for version in ("hallo", "hallo2"):
        if version in backbones:
            unet = write_tiny_hallo_unet(root, version, seed=seed, audio_input_dim=audio_input_dim)
            written[version], written["sd_vae"] = unet["unet"], unet["vae"]
    return written


# Hallo2's official layout for the upscaler (fudan-generative-ai/hallo2 and CodeFormer's releases).
UPSCALER_FILES = {
    "upscaler": "hallo2/net_g.pth",
    "background": "realesrgan/RealESRGAN_x2plus.pth",
    "parsing": "facelib/parsing_parsenet.pth",
}


def write_tiny_upscaler_models(root: str | os.PathLike, seed: int = 0) -> dict[str, str]:
    """Tiny random Hallo2 upscaler, RealESRGAN x2 and ParseNet, in their official `.pth` containers."""
    import torch

    from ..upscaler.face_parsing import ParseNetConfig, random_parsenet_state_dict
    from ..upscaler.weights import TemporalCodeFormerConfig, random_state_dict

    paths = {name: os.path.join(os.fspath(root), relative) for name, relative in UPSCALER_FILES.items()}
    for path in paths.values():
        os.makedirs(os.path.dirname(path), exist_ok=True)
    network = TemporalCodeFormerConfig(dim_embd=64, n_head=4, n_layers=2, codebook_size=128, nf=32)
    torch.save({"params_ema": random_state_dict(network, seed)}, paths["upscaler"])  # basicsr's save_network layout
    torch.save({"params_ema": _tiny_rrdbnet_state(seed)}, paths["background"])
    parsing = ParseNetConfig(encoder_channels=(32, 64, 64), res_depth=2, decoder_channels=(64, 32))
    torch.save(random_parsenet_state_dict(parsing, seed), paths["parsing"])
    return paths


def _tiny_rrdbnet_state(seed: int, features: int = 8, growth: int = 32, blocks: int = 1) -> dict:
    """RealESRGAN x2plus's RRDBNet keys (x2: pixel-unshuffled 12-channel input) at a tiny width (the growth stays 32:
    spandrel assumes it when it recognises the architecture)."""
    import torch

    generator = torch.Generator().manual_seed(seed)

    def conv(out_channels, in_channels):
        weight = torch.randn(out_channels, in_channels, 3, 3, generator=generator) * (in_channels * 9) ** -0.5
        return weight, torch.zeros(out_channels)

    layers = {"conv_first": conv(features, 12)}
    for block in range(blocks):
        for rdb in (1, 2, 3):
            for index in range(1, 6):
                inputs = features + (index - 1) * growth
                layers[f"body.{block}.rdb{rdb}.conv{index}"] = conv(features if index == 5 else growth, inputs)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        layers[name] = conv(features, features)
    layers["conv_last"] = conv(3, features)
    return {f"{name}.{part}": tensor for name, (weight, bias) in layers.items()
            for part, tensor in (("weight", weight), ("bias", bias))}


# File names the shipped workflows use, inside ComfyUI's models/ folder.
COMFYUI_FILES = {
    "transformer": "diffusion_models/hallo3/hallo3_transformer_bf16.safetensors",
    "reference": "diffusion_models/hallo3/hallo3_reference_bf16.safetensors",
    "vae": "vae/cogvideox_5b_i2v_vae_bf16.safetensors",
    "text_encoder": "text_encoders/t5-v1_1-xxl",
    "wav2vec": "audio_encoders/wav2vec2-base-960h",
    "face_models": "insightface/models/antelopev2",
    "vocal_separator": "audio_separator/Kim_Vocal_2.onnx",
    "upscaler": "hallo_upscaler/hallo2_net_g.pth",
    "background": "upscale_models/RealESRGAN_x2plus.pth",
    "parsing": "hallo_upscaler/parsing_parsenet.pth",
}


def make_tiny_comfyui_models(models_dir: str | os.PathLike, seed: int = 0,
                             backbones=("hallo3", "hallo", "hallo2")) -> dict[str, str]:
    """The same tiny set as `make_tiny_models`, laid out in a ComfyUI `models/` folder under the workflows' names
    (every backbone by default: LoadHalloModel picks the files)."""
    import shutil
    import tempfile

    from ..hallo3.convert import convert_transformers
    from ..hallo_unet.convert import convert_unet
    from ..hallo_unet.vae import load_vae, write_vae_safetensors

    models_dir = os.fspath(models_dir)
    names = {**COMFYUI_FILES, **COMFYUI_UNET_FILES}
    wanted = {"wav2vec", "face_models", "vocal_separator", "upscaler", "background", "parsing"}
    if "hallo3" in backbones:
        wanted |= {"transformer", "reference", "vae", "text_encoder"}
    unets = [v for v in ("hallo", "hallo2") if v in backbones]
    if unets:
        wanted |= {"sd_vae", *unets}
    target = {name: os.path.join(models_dir, relative) for name, relative in names.items() if name in wanted}
    for path in target.values():
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.TemporaryDirectory() as official:
        make_tiny_models(official, seed=seed, backbones=backbones)
        if "hallo3" in backbones:
            main, reference, vae = convert_transformers(official, os.path.dirname(target["transformer"]), "bf16")
            os.replace(main, target["transformer"])
            os.replace(reference, target["reference"])
            os.replace(vae, target["vae"])
            _copy_folder(os.path.join(official, "t5-v1_1-xxl"), target["text_encoder"])
        for version in unets:
            unet = convert_unet(os.path.join(official, version, "net.pth"), official, "fp16", version)[0]
            os.replace(unet, target[version])
        if unets:
            write_vae_safetensors(load_vae(os.path.join(official, "sd-vae-ft-mse")), target["sd_vae"])
        _copy_folder(os.path.join(official, "wav2vec/wav2vec2-base-960h"), target["wav2vec"])
        _copy_folder(os.path.join(official, "face_analysis/models"), target["face_models"])
        for name, source in (("vocal_separator", "audio_separator/Kim_Vocal_2.onnx"),
                             ("upscaler", UPSCALER_FILES["upscaler"]), ("background", UPSCALER_FILES["background"]),
                             ("parsing", UPSCALER_FILES["parsing"])):
            shutil.copy(os.path.join(official, source), target[name])
    return target


def _copy_folder(source: str, destination: str) -> None:
    import shutil

    shutil.rmtree(destination, ignore_errors=True)
    shutil.copytree(source, destination)


COMFYUI_UNET_FILES = {
    "hallo": "diffusion_models/hallo/hallo_unet_fp16.safetensors",
    "hallo2": "diffusion_models/hallo2/hallo2_unet_fp16.safetensors",
    "sd_vae": "vae/sd_vae_ft_mse_fp16.safetensors",
}


def _config(folder: str) -> dict:
    with open(os.path.join(folder, "config.json")) as f:
        return json.load(f)
