"""How each Hallo / Hallo2 model is loaded: one loader per model, shared by the command line and the ComfyUI nodes.

The five networks of `net.pth` are loaded separately so that each is on the device only in its phase: the small
projections and the face locator, the ReferenceNet (once per clip), the denoising UNet (the steps). The VAE is the SD
VAE; the front-ends (InsightFace, wav2vec2, the vocal separator) are Hallo3's, the separator as Hallo and Hallo2 run
it (audio-separator 0.17.2: no amplification of quiet audio).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..runtime.attention import AttentionKernel, kernel_by_name, set_attention_kernel
from ..runtime.options import EngineOptions
from .model_files import UNetFiles


class UNetProjections(nn.Module):
    """The small networks of a clip's conditioning: image and audio projections and the face locator."""

    def __init__(self, image_proj: nn.Module, audio_proj: nn.Module, face_locator: nn.Module):
        super().__init__()
        self.image_proj, self.audio_proj, self.face_locator = image_proj, audio_proj, face_locator

    @property
    def dtype(self) -> torch.dtype:
        return self.image_proj.proj.weight.dtype


def model_loaders(files: UNetFiles, version: str, options: EngineOptions, weight_casting: bool = True,
                  onnx_device: torch.device | str | None = None, attention_kernel: AttentionKernel | None = None
                  ) -> dict[str, Callable[[torch.device], Any]]:
    """Loaders by name: reference_net, denoiser, projections, vae, wav2vec, face, separator."""
    from ..audio.vocal_separation import load_vocal_separator
    from ..audio.wav2vec_features import load_wav2vec
    from ..face.identity import load_face_analyzer
    from .checkpoint import UNetWeights, load_network
    from .vae import load_vae

    weights = UNetWeights(files.net, version)
    dtype, fp8 = options.dtype, options.fp8_storage
    kernel = attention_kernel or kernel_by_name(options.attention, options.device)

    def network(prefix: str):
        def load(device: torch.device) -> nn.Module:
            model = load_network(weights, prefix, dtype, device, fp8=fp8, casting=weight_casting)
            set_attention_kernel(model, kernel)
            return model
        return load

    def projections(device: torch.device) -> UNetProjections:
        return UNetProjections(*(load_network(weights, prefix, dtype, device)
                                 for prefix in ("imageproj.", "audioproj.", "face_locator."))).eval()

    return {
        "reference_net": network("reference_unet."),
        "denoiser": network("denoising_unet."),
        "projections": projections,
        "vae": lambda device: load_vae(files.vae, dtype=dtype, device=device),
        "wav2vec": lambda device: load_wav2vec(files.wav2vec, device=device),
        "face": lambda device: load_face_analyzer(files.face_models, device=onnx_device or device),
        "separator": lambda device: load_vocal_separator(files.require_vocal_separator(), amplify_quiet=False,
                                                         device=onnx_device or device),
    }


def local_unet_backbone(models_dir, version: str, options: EngineOptions, require_vocal_separator: bool = False,
                        frame_size: int | None = None):
    """Hallo or Hallo2 from an official `pretrained_models/` folder, models managed by `LocalModels`."""
    from ..loading.file_identity import file_identity
    from ..memory.residency import LocalModels
    from .backbone import UNetBackbone

    files = UNetFiles.from_pretrained_dir(models_dir, version)
    if require_vocal_separator:
        files.require_vocal_separator()
    models = LocalModels(model_loaders(files, version, options), options.device, options.keep_resident)
    return UNetBackbone(models, version, options, files, frame_size=frame_size,
                        weights=file_identity(vars(files)))
