"""LoadHalloModel: picks the files of one backbone (Hallo3, Hallo2 or Hallo) from ComfyUI's model folders or an
official pretrained_models folder, detects which backbone they are, and hands on a HALLO_MODEL."""

from __future__ import annotations

import comfy.model_management as mm
from comfy_api.v0_0_2 import io

from ..hallo_core.errors import ModelFileError
from ..hallo_core.hallo3.model_files import ModelFiles
from ..hallo_core.hallo_unet.model_files import UNetFiles
from ..hallo_core.loading.state_dict import LazyStateDict
from ..hallo_core.runtime.options import MEMORY_PRESETS, PRECISIONS, EngineOptions
from . import model_folders as folders
from .comfy_models import comfy_hallo3_model, comfy_unet_model
from .hallo_types import CATEGORY, HalloModelType
from .inputs import choice_input, model_combo
from .segment_node import send_text

ATTENTION = ["comfy", "sdpa", "flash", "cudnn", "efficient", "flash3", "flash4", "sage"]
UNET_FORMAT_VERSION = "hallo_unet.version"


def choices(extra: list[str], found: list[str]) -> list[str]:
    return extra + [name for name in found if name not in extra]


class LoadHalloModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        official, none = folders.OFFICIAL, folders.NONE
        return io.Schema(
            node_id="LoadHalloModel",
            display_name="Load Hallo Model",
            category=CATEGORY,
            description="Loads Hallo3, Hallo2 or Hallo (detected from the files) lazily: each model is read when a "
                        "node first needs it and managed by ComfyUI's model management. Pick an official "
                        "pretrained_models folder, or single files (python -m hallo_core convert).",
            inputs=[
                model_combo("official_models", "hallo3", choices([none], folders.official_roots()),
                            "an official pretrained_models folder (in models/hallo3, models/hallo2 or models/hallo); "
                            "inputs set to '(official pretrained_models)' come from it"),
                model_combo("diffusion_model", "diffusion_models", choices([official],
                                                                           folders.files_for_role("diffusion_model")),
                            "the Hallo3 transformer (hallo3_transformer_*.safetensors) or the Hallo/Hallo2 UNet "
                            "(hallo2_unet_*.safetensors) in models/diffusion_models; it decides the backbone"),
                model_combo("reference", "diffusion_models", choices([official, none],
                                                                     folders.files_for_role("reference")),
                            "Hallo3 only: its identity reference network (hallo3_reference_*.safetensors)"),
                model_combo("vae", "vae", choices([official], folders.files("vae")),
                            "Hallo3: the CogVideoX-5B VAE; Hallo/Hallo2: the SD VAE (sd-vae-ft-mse, e.g. "
                            "vae-ft-mse-840000-ema-pruned.safetensors)"),
                model_combo("text_encoder", "text_encoders", choices([official, none], folders.folders(
                    "text_encoders", "spiece.model")), "Hallo3 only: a T5 v1.1 XXL folder in models/text_encoders"),
                model_combo("audio_encoder", "audio_encoders", choices([official], folders.folders(
                    "audio_encoders", "preprocessor_config.json")),
                    "the wav2vec2-base-960h folder in models/audio_encoders"),
                model_combo("face_models", "insightface", choices([official], folders.folders(
                    "insightface", "glintr100.onnx")), "InsightFace antelopev2 in models/insightface"),
                model_combo("vocal_separator", "audio_separator", choices([official, none], folders.files(
                    "audio_separator", suffixes=(".onnx",))), "Kim_Vocal_2.onnx in models/audio_separator"),
                model_combo("upscaler", "hallo_upscaler", choices([none], folders.files(
                    "hallo_upscaler", suffixes=(".pth", ".pt", ".safetensors"))),
                    "Hallo2's temporal VQ face upscaler (net_g) in models/hallo_upscaler, for VQTemporalUpscale4K"),
                choice_input("precision", list(PRECISIONS), default="auto",
                               tooltip="auto: bf16 on a GPU, fp32 on a CPU; fp8_e4m3fn stores the large networks' "
                                       "matrices in 8 bits (half the memory, small cost)"),
                choice_input("memory", list(MEMORY_PRESETS), default="balanced",
                               tooltip="balanced: ComfyUI loads each model only for its phase; full: keep them all "
                                       "on the GPU; low: fp8 storage and weights streamed to the GPU as needed; "
                                       "12gb: low plus a tiled VAE decode (12 GB cards; frames change slightly)"),
                choice_input("attention", ATTENTION, default="comfy",
                               tooltip="comfy: ComfyUI's optimized attention (follows --use-sage-attention etc.); "
                                       "sdpa/flash/cudnn/efficient: a PyTorch SDPA kernel (exact); flash3/flash4: "
                                       "an installed FlashAttention 3/4 (exact); sage: SageAttention (int8, changes "
                                       "the result a little)"),
                io.Boolean.Input("compile", default=True,
                                 tooltip="torch.compile each transformer block where it pays (CUDA GPUs with Triton): "
                                         "faster steps after a first one that compiles (cached on disk for the next "
                                         "run); off keeps the eager path"),
                io.Int.Input("size", default=512, min=64, max=2048, step=64,
                             tooltip="Hallo/Hallo2 only: the square frame side in pixels (official 512)"),
            ],
            outputs=[HalloModelType.Output(display_name="model", tooltip="connect to every Hallo node")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, official_models, diffusion_model, reference, vae, text_encoder, audio_encoder, face_models,
                vocal_separator, upscaler, precision, memory, attention="comfy", compile=False,
                size=512) -> io.NodeOutput:
        root = None if official_models == folders.NONE else folders.resolve_official_root(official_models)
        backbone = _backbone_of(diffusion_model, root)
        picks = _Picks(root, backbone)
        upscaler_path = None if upscaler == folders.NONE else folders.resolve_file("hallo_upscaler", upscaler)
        options = EngineOptions.resolve(mm.get_torch_device(), precision, memory, "auto", None if compile else False)
        kernel = _attention_kernel(attention)
        front_end = {  # the speech and face files every backbone takes
            "wav2vec": picks.folder(audio_encoder, "audio_encoders", "wav2vec"),
            "face_models": picks.folder(face_models, "insightface", "face_models"),
            "vocal_separator": picks.optional_file(vocal_separator, "audio_separator", "vocal_separator"),
            "face_landmarker": picks.official_files.face_landmarker if picks.official_files else None,
        }
        if backbone == "hallo3":
            if reference == folders.NONE or text_encoder == folders.NONE:
                raise ModelFileError("Hallo3 needs its reference network and the T5 text encoder: set reference and "
                                     "text_encoder to files (or to the official folder)")
            files = ModelFiles(
                transformer=picks.file(diffusion_model, "diffusion_models", "transformer"),
                reference=picks.file(reference, "diffusion_models", "reference"),
                vae=picks.file(vae, "vae", "vae"),
                text_encoder=picks.folder(text_encoder, "text_encoders", "text_encoder"),
                **front_end,
            )
            _check_vae(files.vae, "cogvideox", backbone)
            model = comfy_hallo3_model(files, options, upscaler_path, kernel)
        else:
            if reference != folders.NONE and reference != folders.OFFICIAL:
                raise ModelFileError(f"reference is Hallo3's identity network; the model picked is {backbone}: set "
                                     "reference to none")
            if text_encoder != folders.NONE and text_encoder != folders.OFFICIAL:
                raise ModelFileError(f"{backbone} takes no text encoder (it has no prompt): set text_encoder to none")
            files = UNetFiles(
                net=picks.file(diffusion_model, "diffusion_models", "net"),
                vae=picks.file(vae, "vae", "vae"),
                **front_end,
            )
            _check_vae(files.vae, "sd", backbone)
            model = comfy_unet_model(files, backbone, options, size, upscaler_path, kernel)
        summary = f"{backbone} · {options.dtype} · {memory}" + (f" · {size}x{size}" if backbone != "hallo3" else "")
        send_text(summary.replace("torch.", ""), cls.hidden.unique_id)
        return io.NodeOutput(model)


def _backbone_of(diffusion_model: str, root: str | None) -> str:
    """The backbone the picked diffusion model is (its file's metadata, or the official folder's weights)."""
    if diffusion_model == folders.OFFICIAL:
        if root is None:
            raise ModelFileError("diffusion_model is set to '(official pretrained_models)' but no official folder is "
                                 "selected; pick one in official_models or pick a file")
        found = folders.backbones_at(root)
        if len(found) != 1:
            raise ModelFileError(f"{root} holds the weights of {' and '.join(found)}; pick the diffusion_model file "
                                 "of the one to use (python -m hallo_core convert)")
        return found[0]
    path = folders.resolve_file("diffusion_models", diffusion_model)
    state = LazyStateDict(path)
    fmt = state.metadata.get("hallo3.format") or state.metadata.get("hallo_unet.format")
    if fmt == "hallo3-transformer":
        return "hallo3"
    if fmt == "hallo-unet-net" and state.metadata.get(UNET_FORMAT_VERSION) in ("hallo", "hallo2"):
        return state.metadata[UNET_FORMAT_VERSION]
    raise ModelFileError(f"{diffusion_model} is not a Hallo3 transformer or a Hallo/Hallo2 UNet written by "
                         "python -m hallo_core convert; convert the official weights first")


class _Picks:
    """Resolves each input: a name in its ComfyUI folder, or the official folder's file for that role."""

    def __init__(self, root: str | None, backbone: str):
        self.root = root
        self.official_files = None
        if root is not None:
            self.official_files = (ModelFiles.from_pretrained_dir(root) if backbone == "hallo3"
                                   else UNetFiles.from_pretrained_dir(root, backbone))

    def _official(self, role: str):
        if self.official_files is None:
            raise ModelFileError(f"{role} is set to '(official pretrained_models)' but no official folder is "
                                 "selected; pick one in official_models or pick a file")
        return getattr(self.official_files, role)

    def file(self, choice: str, key: str, role: str) -> str:
        return self._official(role) if choice == folders.OFFICIAL else folders.resolve_file(key, choice)

    def folder(self, choice: str, key: str, role: str) -> str:
        return self._official(role) if choice == folders.OFFICIAL else folders.resolve_folder(key, choice)

    def optional_file(self, choice: str, key: str, role: str) -> str | None:
        if choice == folders.NONE:
            return None
        if choice == folders.OFFICIAL:
            return self.official_files.require_vocal_separator() if self.official_files else self._official(role)
        return folders.resolve_file(key, choice)


def _check_vae(path: str, kind: str, backbone: str) -> None:
    """Refuse a VAE of the other family (CogVideoX's is 3-D, the SD VAE 2-D) with the fix named."""
    import os

    if os.path.isdir(path) or not path.endswith(".safetensors"):
        return  # official folders and files are checked by the loaders
    state = LazyStateDict(path)
    conv_in = next((name for name in state if name.endswith("encoder.conv_in.weight")
                    or name.endswith("encoder.conv_in.conv.weight")), None)
    if conv_in is None:
        return
    found = "cogvideox" if len(state.shape(conv_in)) == 5 else "sd"
    if found != kind:
        wanted = "the CogVideoX-5B VAE" if kind == "cogvideox" else "the SD VAE (sd-vae-ft-mse)"
        raise ModelFileError(f"the VAE picked is the {'CogVideoX' if found == 'cogvideox' else 'SD'} VAE; {backbone} "
                             f"needs {wanted}")


def _attention_kernel(choice: str):
    """The kernel the models compute attention with (per model: two loaders keep their own choice)."""
    from ..hallo_core.runtime.attention import kernel_by_name

    if choice != "comfy":  # an installed kernel that is missing is refused in one line naming the package
        return kernel_by_name("auto" if choice == "sdpa" else choice, mm.get_torch_device())
    from comfy.ldm.modules.attention import optimized_attention

    def comfy_attention(query, key, value):  # (b, heads, len, d) in and out
        return optimized_attention(query, key, value, query.shape[1], skip_reshape=True, skip_output_reshape=True)

    return comfy_attention
