"""`make-tiny-models`: a complete set of tiny random-weight models, in the official layout and file formats.

Every file `generate` (and the ComfyUI nodes) reads is written, with the official names and containers - the SAT
DeepSpeed `.pt` of the transformers, the SAT VAE `.pt`, Hugging Face folders for T5 and wav2vec2, InsightFace ONNX
files, the MDX separator ONNX - so the whole real loading and rendering path runs on a CPU in seconds to minutes.
The weights are random: the videos are noise, the code path is the real one.
"""

from __future__ import annotations

import json
import os

from .tiny_frontends import write_tiny_face_models, write_tiny_t5, write_tiny_vocal_separator, write_tiny_wav2vec
from .tiny_transformer import tiny_config, write_tiny_hallo3
from .vae_checkpoint import write_tiny_sat_vae

WINDOW = 5  # wav2vec frames per video frame in Hallo3's audio windows


def make_tiny_models(root: str | os.PathLike, seed: int = 0) -> dict[str, str]:
    """Write `root/` in the `pretrained_models/` layout; returns what was written where."""
    root = os.fspath(root)
    os.makedirs(root, exist_ok=True)
    written = {
        "t5": write_tiny_t5(os.path.join(root, "t5-v1_1-xxl"), seed=seed),
        "wav2vec": write_tiny_wav2vec(os.path.join(root, "wav2vec", "wav2vec2-base-960h"), seed=seed),
        "face_analysis": write_tiny_face_models(os.path.join(root, "face_analysis", "models"), seed=seed),
        "audio_separator": write_tiny_vocal_separator(os.path.join(root, "audio_separator", "Kim_Vocal_2.onnx"),
                                                      seed=seed),
    }
    vae = os.path.join(root, "cogvideox-5b-i2v-sat", "vae", "3d-vae.pt")
    os.makedirs(os.path.dirname(vae), exist_ok=True)
    write_tiny_sat_vae(vae, seed=seed)
    written["vae"] = vae

    text_dim = _config(os.path.join(root, "t5-v1_1-xxl"))["d_model"]
    wav2vec = _config(os.path.join(root, "wav2vec", "wav2vec2-base-960h"))
    audio_input_dim = WINDOW * wav2vec["num_hidden_layers"] * wav2vec["hidden_size"]
    written["hallo3"] = write_tiny_hallo3(root, tiny_config(text_dim, audio_input_dim), seed=seed)
    return written


# File names the shipped workflows use, inside ComfyUI's models/ folder.
COMFYUI_FILES = {
    "transformer": "diffusion_models/hallo3/hallo3_transformer_bf16.safetensors",
    "reference": "diffusion_models/hallo3/hallo3_reference_bf16.safetensors",
    "vae": "vae/cogvideox_5b_i2v_vae_bf16.safetensors",
    "text_encoder": "text_encoders/t5-v1_1-xxl",
    "wav2vec": "audio_encoders/wav2vec2-base-960h",
    "face_models": "insightface/models/antelopev2",
    "vocal_separator": "audio_separator/Kim_Vocal_2.onnx",
}


def make_tiny_comfyui_models(models_dir: str | os.PathLike, seed: int = 0) -> dict[str, str]:
    """The same tiny set as `make_tiny_models`, laid out in a ComfyUI `models/` folder under the workflows' names."""
    import shutil
    import tempfile

    import torch

    from .convert import convert_transformers
    from .vae_checkpoint import load_vae_model, write_vae_safetensors

    models_dir = os.fspath(models_dir)
    target = {name: os.path.join(models_dir, relative) for name, relative in COMFYUI_FILES.items()}
    with tempfile.TemporaryDirectory() as official:
        make_tiny_models(official, seed=seed)
        os.makedirs(os.path.dirname(target["transformer"]), exist_ok=True)
        main, reference = convert_transformers(official, os.path.dirname(target["transformer"]), "bf16")
        os.replace(main, target["transformer"])
        os.replace(reference, target["reference"])
        os.makedirs(os.path.dirname(target["vae"]), exist_ok=True)
        vae = load_vae_model(os.path.join(official, "cogvideox-5b-i2v-sat", "vae", "3d-vae.pt"), dtype=torch.float32)
        write_vae_safetensors(vae, target["vae"], torch.bfloat16)
        for name, source in (("text_encoder", "t5-v1_1-xxl"), ("wav2vec", "wav2vec/wav2vec2-base-960h"),
                             ("face_models", "face_analysis/models")):
            shutil.rmtree(target[name], ignore_errors=True)
            shutil.copytree(os.path.join(official, source), target[name])
        os.makedirs(os.path.dirname(target["vocal_separator"]), exist_ok=True)
        shutil.copy(os.path.join(official, "audio_separator", "Kim_Vocal_2.onnx"), target["vocal_separator"])
    return target


def _config(folder: str) -> dict:
    with open(os.path.join(folder, "config.json")) as f:
        return json.load(f)
