"""Where each model file is: the official `pretrained_models/` download, or single files picked in ComfyUI.

Official layout (`hf download fudan-generative-ai/hallo3 --local-dir pretrained_models`):

    pretrained_models/
      hallo3/latest, hallo3/1/mp_rank_00_model_states.pt      main transformer + reference network (SAT container)
      cogvideox-5b-i2v-sat/vae/3d-vae.pt                      CogVideoX VAE
      t5-v1_1-xxl/                                            T5 v1.1 XXL encoder + tokenizer
      wav2vec/wav2vec2-base-960h/                             wav2vec2 audio encoder
      face_analysis/models/*.onnx                             InsightFace antelopev2 (detector, ArcFace, landmarks)
      audio_separator/Kim_Vocal_2.onnx                        MDX-Net vocal separator
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..loading.official_folder import OfficialFolder, require_vocal_separator

DOWNLOAD_HINT = "hf download fudan-generative-ai/hallo3 --local-dir pretrained_models"


@dataclass(frozen=True)
class ModelFiles:
    transformer: str  # official container (folder or .pt) or our safetensors file
    reference: str  # the same container, or our reference safetensors file
    vae: str
    text_encoder: str
    wav2vec: str
    face_models: str
    vocal_separator: str | None = None
    face_landmarker: str | None = None  # MediaPipe .task, optional

    @classmethod
    def from_pretrained_dir(cls, root: str | os.PathLike) -> "ModelFiles":
        folder = OfficialFolder(root, DOWNLOAD_HINT)
        need = folder.need

        hallo3 = need("hallo3/latest", "Hallo3 transformer weights")
        container = os.path.dirname(hallo3)
        return cls(
            transformer=container,
            reference=container,
            vae=need("cogvideox-5b-i2v-sat/vae/3d-vae.pt", "CogVideoX VAE"),
            text_encoder=need("t5-v1_1-xxl", "T5 text encoder", is_dir=True),
            **folder.front_end_files(),
        )

    def require_vocal_separator(self) -> str:
        return require_vocal_separator(self.vocal_separator, DOWNLOAD_HINT)
