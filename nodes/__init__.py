"""The Hallo node pack: ComfyUI adapters over `hallo_core` (the only package here that imports comfy)."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io
from typing_extensions import override

from . import model_folders
from .audio_encode_wav2vec import HalloAudioEncodeWav2Vec
from .dit_denoise import HalloDiTDenoise
from .identity_reference import HalloIdentityReference
from .load_hallo_model import LoadHalloModel
from .motion_frame_sampler import HalloMotionFrameSampler


class HalloExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        nodes = [LoadHalloModel, HalloAudioEncodeWav2Vec, HalloIdentityReference, HalloMotionFrameSampler,
                 HalloDiTDenoise]
        try:
            from .vq_temporal_upscale import HalloVQTemporalUpscale4K

            nodes.append(HalloVQTemporalUpscale4K)
        except ImportError:
            pass
        return nodes


async def comfy_entrypoint() -> HalloExtension:
    model_folders.register_folders()
    return HalloExtension()
