"""The Hallo node pack: ComfyUI adapters over `hallo_core` (the only package here that imports comfy)."""

from __future__ import annotations

from comfy_api.v0_0_2 import ComfyExtension, io
from typing_extensions import override

from . import model_folders
from .audio_encode_wav2vec import HalloAudioEncodeWav2Vec
from .dit_denoise import HalloDiTDenoise
from .identity_reference import HalloIdentityReference
from .join_videos import HalloJoinVideos
from .load_hallo_model import LoadHalloModel
from .motion_frame_sampler import HalloMotionFrameSampler
from .unet_denoise import HalloUNetDenoise


class HalloExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        nodes = [LoadHalloModel, HalloAudioEncodeWav2Vec, HalloIdentityReference, HalloMotionFrameSampler,
                 HalloDiTDenoise, HalloUNetDenoise, HalloJoinVideos]
        try:
            from .vq_temporal_upscale import HalloVQTemporalUpscale4K

            nodes.append(HalloVQTemporalUpscale4K)
        except ImportError:
            pass
        return nodes


async def comfy_entrypoint() -> HalloExtension:
    model_folders.register_folders()
    _plain_error_names()
    return HalloExtension()


def _plain_error_names() -> None:
    """ComfyUI shows an exception's type with its module, which for a custom node is its install path
    (`.../custom_nodes/<folder>.hallo_core.errors.InputError`); our user errors show as `hallo.InputError`."""
    from ..hallo_core import errors

    for value in vars(errors).values():
        if isinstance(value, type) and issubclass(value, errors.HalloError):
            value.__module__ = "hallo"
