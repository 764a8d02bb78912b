"""Hallo3's models under ComfyUI's model management.

Each torch model is wrapped in a `comfy.model_patcher.ModelPatcher` and brought to the GPU with
`comfy.model_management.load_models_gpu`, so ComfyUI loads, offloads, evicts and partially loads ("lowvram") it like
its own models, and frees it for the user's other models. Linear/conv/norm layers are switched to `comfy.ops`
classes (same parameters, same maths) so a partially loaded model streams its weights instead of failing; with fp8
storage they cast weights to the compute dtype on the fly (`comfy.ops.manual_cast`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import torch

_OPS = ("Linear", "Conv1d", "Conv2d", "Conv3d", "GroupNorm", "LayerNorm")


def adopt_comfy_ops(module: torch.nn.Module, cast_weights: bool = False) -> torch.nn.Module:
    """Give every plain torch layer its `comfy.ops` twin (a subclass: parameters and outputs unchanged)."""
    family = comfy.ops.manual_cast if cast_weights else comfy.ops.disable_weight_init
    for child in module.modules():
        for name in _OPS:
            if type(child) is getattr(torch.nn, name):
                child.__class__ = getattr(family, name)
    return module


def _torch_module(obj: Any) -> torch.nn.Module | None:
    """The nn.Module inside a model object (our wrappers keep it in `.model`); None for ONNX models."""
    if isinstance(obj, torch.nn.Module):
        return obj
    inner = getattr(obj, "model", None)
    return inner if isinstance(inner, torch.nn.Module) else None


class _Managed(torch.nn.Module):
    """A plain container for ComfyUI's ModelPatcher, which sets attributes such as `device` on the module it manages;
    transformers' and diffusers' models expose `device` as a read-only property."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner


class ComfyModels:
    """The pipeline's `ModelProvider` inside ComfyUI: `use(name)` loads through ComfyUI's model management."""

    def __init__(self, loaders: dict[str, Callable[[torch.device], Any]], memory_required: dict[str, int],
                 cast_weights: set[str] = frozenset(), full_load: bool = False):
        self.loaders = loaders
        self.full_load = full_load
        self.memory_required = memory_required
        self.cast_weights = cast_weights
        self.load_device = mm.get_torch_device()
        self.offload_device = mm.unet_offload_device()
        self._objects: dict[str, Any] = {}
        self._patchers: dict[str, comfy.model_patcher.ModelPatcher] = {}

    def _get(self, name: str) -> Any:
        if name not in self._objects:
            obj = self.loaders[name](self.offload_device)
            module = _torch_module(obj)
            if module is not None:
                adopt_comfy_ops(module, cast_weights=name in self.cast_weights)
                self._patchers[name] = comfy.model_patcher.ModelPatcher(
                    _Managed(module), load_device=self.load_device, offload_device=self.offload_device)
            self._objects[name] = obj
        return self._objects[name]

    @contextlib.contextmanager
    def use(self, name: str):
        obj = self._get(name)
        patcher = self._patchers.get(name)
        if patcher is not None:
            mm.load_models_gpu([patcher], memory_required=self.memory_required.get(name, 0),
                               force_full_load=self.full_load)
            if not isinstance(obj, torch.nn.Module) and hasattr(obj, "device"):
                obj.device = torch.device(self.load_device)  # wrappers place their inputs on this device
        yield obj

    def release(self, name: str) -> None:
        # ComfyUI tracks loaded models through weak references: dropping ours frees the model.
        had_patcher = self._patchers.pop(name, None) is not None
        self._objects.pop(name, None)
        if had_patcher:
            mm.cleanup_models_gc()
            mm.soft_empty_cache()

    def cancel_check(self) -> bool:
        mm.throw_exception_if_processing_interrupted()  # raises ComfyUI's own interruption
        return False


class HalloModel:
    """The value of a HALLO_MODEL: a backbone whose models ComfyUI manages, its files and engine options."""

    def __init__(self, backbone, models: ComfyModels, files, options, upscaler: str | None = None):
        self.backbone = backbone
        self.models = models
        self.files = files
        self.options = options
        self.upscaler = upscaler

    @property
    def name(self) -> str:
        return self.backbone.name


def comfy_hallo3_model(files, options, upscaler: str | None = None, attention_kernel=None) -> HalloModel:
    """Hallo3 with its models under ComfyUI's model management (fp8 storage cast by comfy.ops, not by ours)."""
    from ..hallo_core.hallo3.backbone import Hallo3Backbone
    from ..hallo_core.hallo3.checkpoint import TransformerWeights
    from ..hallo_core.hallo3.loaders import model_loaders, phase_working_memory
    from ..hallo_core.loading.file_identity import file_identity

    config = TransformerWeights(files.transformer, "main").config()
    loaders = model_loaders(files, config, options, weight_casting=False, onnx_device=mm.get_torch_device(),
                            attention_kernel=attention_kernel)
    working = phase_working_memory(config, options.dtype, options.plan)  # the tiled decode of `12gb` needs less
    memory_required = {name: working[name] for name in ("transformer", "vae")}  # activations beyond the weights
    models = ComfyModels(loaders, memory_required,
                         cast_weights={"transformer", "reference_net"} if options.fp8_storage else set(),
                         full_load=options.keep_resident)
    backbone = Hallo3Backbone(models, config, options, weights=file_identity(vars(files)),
                              transformer_path=files.transformer)
    return HalloModel(backbone, models, files, options, upscaler)


def comfy_unet_model(files, version: str, options, frame_size: int, upscaler: str | None = None,
                     attention_kernel=None) -> HalloModel:
    """Hallo or Hallo2 with its networks under ComfyUI's model management (fp8 storage cast by comfy.ops)."""
    from ..hallo_core.hallo_unet.backbone import UNetBackbone
    from ..hallo_core.hallo_unet.loaders import model_loaders
    from ..hallo_core.loading.file_identity import file_identity

    loaders = model_loaders(files, version, options, weight_casting=False, onnx_device=mm.get_torch_device(),
                            attention_kernel=attention_kernel)
    element = torch.finfo(options.dtype).bits // 8
    pixels = frame_size * frame_size
    memory_required = {  # activations of one phase, beyond the weights (rough upper bounds)
        "denoiser": 2 * 16 * (pixels // 64) * 320 * 24 * element,
        "reference_net": 6 * (pixels // 64) * 320 * 24 * element,
        "vae": 3 * 512 * pixels * element,
    }
    models = ComfyModels(loaders, memory_required,
                         cast_weights={"denoiser", "reference_net"} if options.fp8_storage else set(),
                         full_load=options.keep_resident)
    backbone = UNetBackbone(models, version, options, files, frame_size=frame_size,
                            weights=file_identity(vars(files)))
    return HalloModel(backbone, models, files, options, upscaler)
