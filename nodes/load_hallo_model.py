"""LoadHalloModel: picks Hallo3's files from ComfyUI's model folders (or an official pretrained_models folder)."""

from __future__ import annotations

import comfy.model_management as mm
from comfy_api.latest import io

from ..hallo_core.errors import ModelFileError
from ..hallo_core.hallo3.model_files import ModelFiles
from ..hallo_core.runtime.options import EngineOptions
from . import model_folders as folders
from .comfy_models import comfy_hallo3_model
from .hallo_types import CATEGORY, HalloModelType

PRECISIONS = ["auto", "bf16", "fp16", "fp32", "fp8_e4m3fn"]
MEMORY = ["balanced", "full", "low"]
ATTENTION = ["comfy", "sdpa", "flash", "cudnn", "efficient"]


def _choices(extra: list[str], found: list[str]) -> list[str]:
    return extra + [name for name in found if name not in extra]


def model_combo(name: str, folder: str, options: list[str], tooltip: str) -> io.Combo.Input:
    """A combo of names inside a ComfyUI model folder; `model_folder` in its spec tells tools (workflow validators)
    that the choices are files of the installation."""
    combo = io.Combo.Input(name, options=options, tooltip=tooltip)
    combo.extra_dict = {**getattr(combo, "extra_dict", {}), "model_folder": folder}  # merged into /object_info
    return combo


class LoadHalloModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        official = folders.OFFICIAL
        return io.Schema(
            node_id="LoadHalloModel",
            display_name="Load Hallo Model",
            category=CATEGORY,
            description="Loads Hallo3 (transformer, identity reference network, VAE, T5, wav2vec2, InsightFace, "
                        "vocal separator) lazily: each model is read when a node first needs it and managed by "
                        "ComfyUI's model management.",
            inputs=[
                model_combo("official_models", "hallo3", _choices([folders.NONE], folders.official_roots()),
                             "an official pretrained_models folder inside a 'hallo3' model folder; components set "
                             "to '(official pretrained_models)' come from it"),
                model_combo("transformer", "diffusion_models", _choices([official], folders.files(
                    "diffusion_models", contains=("hallo3",), suffixes=(".safetensors",))),
                    "hallo3_transformer_*.safetensors in models/diffusion_models (python -m hallo_core convert)"),
                model_combo("reference", "diffusion_models", _choices([official], folders.files(
                    "diffusion_models", contains=("reference",), suffixes=(".safetensors",))),
                    "hallo3_reference_*.safetensors: the identity reference network"),
                model_combo("vae", "vae", _choices([official], folders.files("vae")), "the CogVideoX-5B VAE"),
                model_combo("text_encoder", "text_encoders", _choices([official], folders.folders(
                    "text_encoders", "spiece.model")), "a T5 v1.1 XXL folder in models/text_encoders"),
                model_combo("audio_encoder", "audio_encoders", _choices([official], folders.folders(
                    "audio_encoders", "preprocessor_config.json")),
                    "the wav2vec2-base-960h folder in models/audio_encoders"),
                model_combo("face_models", "insightface", _choices([official], folders.folders(
                    "insightface", "glintr100.onnx")), "InsightFace antelopev2 in models/insightface"),
                model_combo("vocal_separator", "audio_separator", _choices([official, folders.NONE], folders.files(
                    "audio_separator", suffixes=(".onnx",))), "Kim_Vocal_2.onnx in models/audio_separator"),
                model_combo("upscaler", "upscale_models", _choices([folders.NONE], folders.files(
                    "upscale_models", contains=("hallo2", "net_g", "vq"))),
                    "Hallo2's temporal VQ face upscaler, for VQTemporalUpscale4K"),
                io.Combo.Input("precision", options=PRECISIONS, default="auto",
                               tooltip="auto: bf16 on a GPU (as the official code), fp32 on a CPU; fp8_e4m3fn "
                                       "stores the transformers' matrices in 8 bits (half the memory, small cost)"),
                io.Combo.Input("memory", options=MEMORY, default="balanced",
                               tooltip="balanced: ComfyUI loads each model only for its phase; full: keep them all "
                                       "on the GPU; low: fp8 storage and weights streamed to the GPU as needed"),
                io.Combo.Input("attention", options=ATTENTION, default="comfy",
                               tooltip="comfy: ComfyUI's optimized attention (follows --use-sage-attention etc.); "
                                       "the others pick a PyTorch SDPA kernel; all compute the same attention"),
                io.Boolean.Input("compile", default=False,
                                 tooltip="torch.compile each transformer block: faster steps after a slow first one"),
            ],
            outputs=[HalloModelType.Output(display_name="model")],
        )

    @classmethod
    def validate_inputs(cls, official_models, transformer, reference, vae, text_encoder, audio_encoder, face_models,
                        vocal_separator, upscaler, precision, memory, attention):
        """Refuse, when the prompt is queued, any name that is not a file or folder of the model folders."""
        special = {folders.OFFICIAL, folders.NONE}
        checks = [("hallo3", official_models, "folder"), ("diffusion_models", transformer, "file"),
                  ("diffusion_models", reference, "file"), ("vae", vae, "file"),
                  ("text_encoders", text_encoder, "folder"), ("audio_encoders", audio_encoder, "folder"),
                  ("insightface", face_models, "folder"), ("audio_separator", vocal_separator, "file"),
                  ("upscale_models", upscaler, "file")]
        for key, value, kind in checks:
            if value in special:
                continue
            if key == "hallo3":
                if value not in folders.official_roots():
                    return f"'{value}' is not an official pretrained_models folder in the 'hallo3' model folders"
                continue
            try:
                folders.resolve_file(key, value) if kind == "file" else folders.resolve_folder(key, value)
            except ModelFileError as error:
                return str(error)
        if precision not in PRECISIONS or memory not in MEMORY or attention not in ATTENTION:
            return f"precision must be one of {PRECISIONS}, memory one of {MEMORY}, attention one of {ATTENTION}"
        return True

    @classmethod
    def execute(cls, official_models, transformer, reference, vae, text_encoder, audio_encoder, face_models,
                vocal_separator, upscaler, precision, memory, attention="comfy", compile=False) -> io.NodeOutput:
        root = None if official_models == folders.NONE else folders.resolve_official_root(official_models)
        official = ModelFiles.from_pretrained_dir(root) if root else None

        def pick(choice, from_official, resolve):
            if choice == folders.OFFICIAL:
                if official is None:
                    raise ModelFileError("a component is set to '(official pretrained_models)' but no official "
                                         "folder is selected; pick one in official_models or pick a file")
                return from_official(official)
            return resolve(choice)

        files = ModelFiles(
            transformer=pick(transformer, lambda o: o.transformer,
                             lambda n: folders.resolve_file("diffusion_models", n)),
            reference=pick(reference, lambda o: o.reference, lambda n: folders.resolve_file("diffusion_models", n)),
            vae=pick(vae, lambda o: o.vae, lambda n: folders.resolve_file("vae", n)),
            text_encoder=pick(text_encoder, lambda o: o.text_encoder,
                              lambda n: folders.resolve_folder("text_encoders", n)),
            wav2vec=pick(audio_encoder, lambda o: o.wav2vec, lambda n: folders.resolve_folder("audio_encoders", n)),
            face_models=pick(face_models, lambda o: o.face_models, lambda n: folders.resolve_folder("insightface", n)),
            vocal_separator=None if vocal_separator == folders.NONE else pick(
                vocal_separator, lambda o: o.require_vocal_separator(),
                lambda n: folders.resolve_file("audio_separator", n)),
        )
        upscaler_path = None if upscaler == folders.NONE else folders.resolve_file("upscale_models", upscaler)
        options = EngineOptions.resolve(mm.get_torch_device(), precision, memory, "auto", compile)
        return io.NodeOutput(comfy_hallo3_model(files, options, upscaler_path, _attention_kernel(attention)))


def _attention_kernel(choice: str):
    """The kernel the models compute attention with (per model: two loaders keep their own choice)."""
    from ..hallo_core.runtime.attention import sdpa_kernel

    if choice != "comfy":
        return sdpa_kernel("auto" if choice == "sdpa" else choice)
    from comfy.ldm.modules.attention import optimized_attention

    def comfy_attention(query, key, value):  # (b, heads, len, d) in and out
        return optimized_attention(query, key, value, query.shape[1], skip_reshape=True, skip_output_reshape=True)

    return comfy_attention
