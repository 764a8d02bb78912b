"""How each of Hallo3's models is loaded: one function per model, shared by the command line and the ComfyUI nodes.

Each loader takes the device to load onto and returns the model. Two official-loader rules are kept: weights that
the Hallo3 container itself carries for the VAE (`first_stage_model.*`) or T5 (`conditioner.embedders.0.transformer.*`)
override the separately downloaded files, as SAT's `load_checkpoint` runs after the engine is built.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..errors import ModelFileError
from ..runtime.attention import AttentionKernel, kernel_by_name, set_attention_kernel
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

    `options` (runtime/options.py) says the dtype, the memory plan (fp8 storage, block streaming, tiled decode),
    compile, fp8 matmul and the attention kernel; `weight_casting` upcasts fp8-stored matrices per layer (ComfyUI does
    that itself with comfy.ops); `attention_kernel` overrides the kernel `options.attention` names (ComfyUI's
    optimized attention).
    """
    dtype, fp8_storage, plan = options.dtype, options.fp8_storage, options.plan
    kernel = attention_kernel or kernel_by_name(options.attention, options.device)
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
    working = phase_working_memory(config, dtype, plan)

    def streaming(device) -> bool:
        return plan.stream_blocks and torch.device(device).type == "cuda"

    def transformer(device: torch.device):
        stream = streaming(device)
        model = load_transformer(files.transformer, dtype=dtype, device="cpu" if stream else device, config=config,
                                 dtype_for=storage)
        return prepare_transformer(model, device, weight_casting=fp8_storage and weight_casting,
                                   fp8_matmul=options.fp8_matmul, stream_blocks=stream,
                                   compile_blocks=options.compile, attention_kernel=kernel,
                                   budget=stream_budget(plan, device, working["transformer"]))

    def reference_net(device: torch.device):
        stream = streaming(device) and plan.stream_all
        model = load_reference_net(files.reference, dtype=dtype, device="cpu" if stream else device, config=config,
                                   dtype_for=storage)
        return prepare_transformer(model, device, weight_casting=fp8_storage and weight_casting, stream_blocks=stream,
                                   entry_children=("norm1",),
                                   budget=stream_budget(plan, device, working["reference_net"]))

    def text_encoder(device: torch.device):
        stream = streaming(device) and plan.stream_all
        encoder = load_text_encoder(files.text_encoder, device="cpu" if stream else device, dtype=dtype)
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
            encoder.model.to(device="cpu" if stream else device, dtype=dtype)
        return prepare_text_encoder(encoder, device, stream_blocks=stream,
                                    budget=stream_budget(plan, device, working["text_encoder"]))

    def vae(device: torch.device):
        model = load_vae(vae_source, dtype=dtype, device=device)
        model.decode_tiles = plan.vae_decode_tiles
        return model

    return {
        "transformer": transformer,
        "reference_net": reference_net,
        "vae": vae,
        "text_encoder": text_encoder,
        "wav2vec": lambda device: load_wav2vec(files.wav2vec, device=device),
        "face": lambda device: load_face_analyzer(files.face_models, device=onnx_device or device),
        "separator": lambda device: load_vocal_separator(files.require_vocal_separator(),
                                                         device=onnx_device or device),
    }


GiB = 1 << 30


def phase_working_memory(config: Hallo3Config, dtype: torch.dtype, plan) -> dict[str, int]:
    """Rough device memory a phase needs beyond its model's weights (bytes), at the model's frame size: what
    `balanced` keeps free before leaving a model on the device, and what a streaming budget leaves for activations.
    Scaled from the H200 measurements at 480x720 in bf16 (docs/benchmarks.md: the decode's 16 GB, the transformer
    phase's activations ~5 GB)."""
    element = torch.finfo(dtype).bits // 8
    pixels = config.pixel_size[0] * config.pixel_size[1]
    frames = 1 + 4 * (config.latent_frames - 1)
    tokens = config.text_length + config.latent_frames * config.tokens_per_frame + config.tokens_per_frame
    decode = frames * 512 * pixels * element // (3 if plan.vae_decode_tiles else 1)
    return {
        "transformer": 2 * tokens * (config.mlp_dim + 6 * config.hidden_size) * element * 2,
        "vae": decode,
        "reference_net": 4 * (config.text_length + config.tokens_per_frame) * config.mlp_dim * element + GiB // 4,
        "text_encoder": GiB // 2,
    }


def weight_estimates(files: ModelFiles, config: Hallo3Config, dtype: torch.dtype) -> dict[str, int]:
    """`<name>:weights` -> bytes of the large models before they are loaded (parameters counted on the meta device;
    T5 from its files' sizes), so `balanced` can make room for a model it has not loaded yet."""
    import glob
    import os

    from .reference_net import IdentityReferenceNet
    from .transformer import Hallo3Transformer

    element = torch.finfo(dtype).bits // 8

    def counted(build) -> int:
        with torch.device("meta"):
            return sum(p.numel() for p in build().parameters()) * element

    t5_files = glob.glob(os.path.join(os.fspath(files.text_encoder), "*.safetensors"))
    return {"transformer:weights": counted(lambda: Hallo3Transformer(config)),
            "reference_net:weights": counted(lambda: IdentityReferenceNet(config.reference_config())),
            "text_encoder:weights": sum(os.path.getsize(path) for path in t5_files),
            "vae:weights": GiB // 2}


def stream_budget(plan, device: torch.device | str, working: int) -> float | None:
    """Bytes the streamed model's weights may occupy on the device (None: stream every block)."""
    if plan.device_budget_gb is None or torch.device(device).type != "cuda":
        return None
    total = torch.cuda.get_device_properties(torch.device(device)).total_memory
    return min(plan.device_budget_gb * GiB, 0.9 * total) - working - GiB // 2


def prepare_transformer(model: torch.nn.Module, device: torch.device | str, *, weight_casting: bool = False,
                        fp8_matmul: bool = False, stream_blocks: bool = False, compile_blocks: bool = False,
                        attention_kernel: AttentionKernel | None = None, budget: float | None = None,
                        entry_children: tuple[str, ...] = ()):
    """What the presets and speed options do to a loaded transformer (or reference network), in this order.

    `weight_casting` makes fp8-stored matrices upcast per layer; `fp8_matmul` switches the blocks' matrices to
    row-wise fp8 matmuls; `stream_blocks` (CUDA) keeps the blocks in page-locked host memory and streams them one block
    ahead, keeping as many leading blocks on the device as `budget` bytes allow (all streamed without a budget), and
    moves the rest of the model to `device`; `compile_blocks` compiles each block on its own.
    """
    from ..memory.block_streaming import BlockStreamer, blocks_that_fit
    from ..memory.pinned import module_bytes, move_unstreamed
    from ..memory.weight_casting import enable_fp8_matmul, enable_weight_casting

    if attention_kernel is not None:
        set_attention_kernel(model, attention_kernel)
    if weight_casting:
        enable_weight_casting(model)
    if fp8_matmul:
        enable_fp8_matmul(model)
    if stream_blocks:
        blocks = model.transformer_blocks
        keep = 0 if budget is None else blocks_that_fit(blocks, budget - (module_bytes(model) - module_bytes(blocks)))
        model.block_streamer = BlockStreamer(blocks, device, keep=keep, owner=model, entry_children=entry_children)
        move_unstreamed(model, device)
    if compile_blocks:
        model.compile_blocks()
    return model


def prepare_text_encoder(encoder, device: torch.device | str, *, stream_blocks: bool = False,
                         budget: float | None = None):
    """T5 with its 24 encoder blocks streamed from host memory (`12gb`), the embeddings and final norm on `device`."""
    if not stream_blocks:
        return encoder
    from ..memory.block_streaming import BlockStreamer, blocks_that_fit
    from ..memory.pinned import module_bytes, move_unstreamed

    blocks = encoder.model.encoder.block
    keep = 0 if budget is None else blocks_that_fit(blocks, budget - (module_bytes(encoder.model) -
                                                                      module_bytes(blocks)))
    encoder.block_streamer = BlockStreamer(blocks, device, keep=keep, owner=encoder.model)
    move_unstreamed(encoder.model, device)
    encoder.device = torch.device(device)
    return encoder


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
    plan = options.plan
    working = phase_working_memory(config, options.dtype, plan)
    if plan.keep_while_fits and options.device.type == "cuda":  # what a model not loaded yet will take
        working.update(weight_estimates(files, config, options.dtype))
    models = LocalModels(model_loaders(files, config, options), options.device, options.keep_resident,
                         keep_while_fits=plan.keep_while_fits, working_memory=working)
    return Hallo3Backbone(models, config, options, weights=file_identity(vars(files)),
                          transformer_path=files.transformer)
