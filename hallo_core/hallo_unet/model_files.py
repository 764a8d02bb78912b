"""Where each Hallo / Hallo2 model file is: the official `pretrained_models/` download, or files picked in ComfyUI.

Official layout (`hf download fudan-generative-ai/hallo2 --local-dir pretrained_models`; Hallo: `.../hallo`):

    pretrained_models/
      hallo2/net.pth (Hallo: hallo/net.pth)     the five networks (ReferenceNet, UNet3D, face locator, projections)
      sd-vae-ft-mse/                            the SD VAE (diffusers folder)
      wav2vec/wav2vec2-base-960h/               wav2vec2 audio encoder
      face_analysis/models/*.onnx               InsightFace antelopev2; face_landmarker_v2_with_blendshapes.task
      audio_separator/Kim_Vocal_2.onnx          MDX-Net vocal separator
      (stable-diffusion-v1-5/, motion_module/: only the official code's construction reads them; not needed)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..loading.official_folder import OfficialFolder, require_vocal_separator

DOWNLOAD_HINTS = {
    "hallo": "hf download fudan-generative-ai/hallo --local-dir pretrained_models",
    "hallo2": "hf download fudan-generative-ai/hallo2 --local-dir pretrained_models",
}


@dataclass(frozen=True)
class UNetFiles:
    net: str  # official net.pth or our converted safetensors
    vae: str  # sd-vae-ft-mse folder or a single VAE safetensors file
    wav2vec: str
    face_models: str
    vocal_separator: str | None = None
    face_landmarker: str | None = None  # MediaPipe .task, optional

    @classmethod
    def from_pretrained_dir(cls, root: str | os.PathLike, version: str) -> "UNetFiles":
        folder = OfficialFolder(root, DOWNLOAD_HINTS[version])
        need = folder.need
        return cls(
            net=need(f"{version}/net.pth", f"{version} weights"),
            vae=need("sd-vae-ft-mse", "SD VAE (sd-vae-ft-mse)", is_dir=True),
            **folder.front_end_files(),
        )

    def require_vocal_separator(self) -> str:
        return require_vocal_separator(self.vocal_separator)
