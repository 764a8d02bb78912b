"""How each of Hallo3's models is loaded: one function per model, shared by the command line and the ComfyUI nodes.

Each loader takes the device to load onto and returns the model. Two official-loader rules are kept: weights that
the Hallo3 container itself carries for the VAE (`first_stage_model.*`) or T5 (`conditioner.embedders.0.transformer.*`)
override the separately downloaded files, as SAT's `load_checkpoint` runs after the engine is built.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..errors import ModelFileError
from ..runtime.attention import AttentionKernel, sdpa_kernel, set_attention_kernel
from ..runtime.options import EngineOptions
from .config import Hallo3Config
from .model_files import ModelFiles

VAE_PREFIX = "first_stage_model."
T5_PREFIX = "conditioner.embedders.0.transformer."


def model_loaders(
    files: ModelFiles,
    config: Hallo3Config,
    options: EngineOptions,
    weight_casting: bool = True,
    onnx_device: torch.device | str | None = None,
    attention_kernel: AttentionKernel | None = None,
) -> dict[str, Callable[[torch.device], Any]]:
    """Loaders by name: transformer, reference_net, vae, text_encoder, wav2vec, face, separator.

    `options` (runtime/options.py) says the dtype, fp8 storage, block streaming, compile and fp8 matmul;
    `weight_casting` upcasts fp8-stored matrices per layer (ComfyUI does that itself with comfy.ops);
    `attention_kernel` overrides the kernel `options.attention` names (ComfyUI's optimized attention).
    """
    dtype, fp8_storage = options.dtype, options.fp8_storage
    kernel = attention_kernel or sdpa_kernel(options.attention)
    from ..audio.vocal_separation import load_vocal_separator
    from ..audio.wav2vec_features import load_wav2vec
    from ..face.identity import load_face_analyzer
    from .checkpoint import TransformerWeights, load_reference_net, load_transformer
    from .checkpoint import fp8_storage as fp8_policy
    from .text_encoder import load_text_encoder
    from .vae_checkpoint import load_vae

    storage = fp8_policy(dtype) if fp8_storage else None
    container = TransformerWeights(files.transformer, "main")
    vae_source = container.source if container.carries(VAE_PREFIX) else files.vae

    def transformer(device: torch.device):
        stream = options.plan.stream_blocks and torch.device(device).type == "cuda"
        model = load_transformer(files.transformer, dtype=dtype, device="cpu" if stream else device, config=config,
                                 dtype_for=storage)
        return prepare_transformer(model, device, weight_casting=fp8_storage and weight_casting,
                                   fp8_matmul=options.fp8_matmul, stream_blocks=stream,
                                   compile_blocks=options.compile, attention_kernel=kernel)

    def reference_net(device: torch.device):
        model = load_reference_net(files.reference, dtype=dtype, device=device, config=config, dtype_for=storage)
        return prepare_transformer(model, device, weight_casting=fp8_storage and weight_casting)

    def text_encoder(device: torch.device):
        encoder = load_text_encoder(files.text_encoder, device=device, dtype=dtype)
        carried = {name[len(T5_PREFIX):]: container.state[name] for name in container.state
                   if name.startswith(T5_PREFIX)}
        if carried:
            try:
                result = encoder.model.load_state_dict(carried, strict=False)
                misfit = result.unexpected_keys[:1]
            except RuntimeError as error:  # a shape mismatch
                misfit = [str(error).strip().splitlines()[-1].strip()]
            if misfit:
                raise ModelFileError(f"{container.source}: its T5 weights do not fit the T5 model "
                                     f"(e.g. {misfit[0]}); download the files again")
            encoder.model.to(device=device, dtype=dtype)
        return encoder

    return {
        "transformer": transformer,
        "reference_net": reference_net,
        "vae": lambda device: load_vae(vae_source, dtype=dtype, device=device),
        "text_encoder": text_encoder,
        "wav2vec": lambda device: load_wav2vec(files.wav2vec, device=device),
        "face": lambda device: load_face_analyzer(files.face_models, device=onnx_device or device),
        "separator": lambda device: load_vocal_separator(files.require_vocal_separator(),
                                                         device=onnx_device or device),
    }


def prepare_transformer(model: torch.nn.Module, device: torch.device | str, *, weight_casting: bool = False,
                        fp8_matmul: bool = False, stream_blocks: bool = False, compile_blocks: bool = False,
                        attention_kernel: AttentionKernel | None = None):
    """What the presets and speed options do to a loaded transformer (or reference network), in this order.

    `weight_casting` makes fp8-stored matrices upcast per layer; `stream_blocks` (CUDA) keeps the blocks in pinned
    host memory and streams them one block ahead; `compile_blocks` compiles each block on its own.
    """
    from ..memory.block_streaming import BlockStreamer
    from ..memory.weight_casting import enable_fp8_matmul, enable_weight_casting

    if attention_kernel is not None:
        set_attention_kernel(model, attention_kernel)
    if weight_casting:
        enable_weight_casting(model)
    if fp8_matmul:
        enable_fp8_matmul(model)
    if stream_blocks:
        model.block_streamer = BlockStreamer(model.transformer_blocks, device)
    if compile_blocks:
        model.compile_blocks()
    return model


def local_hallo3_backbone(models_dir, options: EngineOptions, require_vocal_separator: bool = False):
    """Hallo3 from an official `pretrained_models/` folder, its models managed by `LocalModels` (outside ComfyUI)."""
    from ..loading.file_identity import file_identity
    from ..memory.residency import LocalModels
    from .backbone import Hallo3Backbone
    from .checkpoint import TransformerWeights

    files = ModelFiles.from_pretrained_dir(models_dir)
    if require_vocal_separator:
        files.require_vocal_separator()
    config = TransformerWeights(files.transformer, "main").config()
    models = LocalModels(model_loaders(files, config, options), options.device, options.keep_resident)
    return Hallo3Backbone(models, config, options, weights=file_identity(vars(files)), transformer_path=files.transformer)
