"""Engine options, resolved in one place for the command line, the ComfyUI nodes and the benchmarks.

A user picks names: a precision (`auto`, `bf16`, `fp16`, `fp32`, `fp8_e4m3fn`), a memory preset (`full`, `balanced`,
`low`, `12gb`), an attention kernel and whether to compile. `EngineOptions.resolve` turns them into what the engine
does: the compute dtype, which weights are stored in fp8, whether blocks stream from host memory, whether models stay
on the device between phases, how the VAE decodes.

Memory presets (each a `MemoryPlan`):
* `full`: every model stays on the device after its first use (fastest when it all fits);
* `balanced` (default): a model is moved in for its phase from pinned host memory, and stays while the device has
  room for the next phase (decided from free device memory); same numbers as `full`;
* `low`: as `balanced` without staying, and the large networks keep their matrices in fp8 (upcast per layer) with the
  transformer's blocks streamed from pinned host memory one block ahead (on CUDA); changes the numbers by fp8 rounding;
* `12gb`: `low` for a 12 GB card: T5 and the reference network streamed block by block too, blocks kept on the
  device only as far as a 10 GB budget (weights and activations) allows, and the VAE decoded in spatial tiles
  (changes the decoded frames slightly; the latents are `low`'s).

Compile (`compile=None`, the default) means: regional `torch.compile` on CUDA GPUs where Triton is installed (exact
within bf16 rounding, faster), eager elsewhere (on a CPU compiling costs more than it saves, and the fp32 parity path
stays eager). `compile=False` always keeps the eager path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..errors import InputError
from .parallel_plan import ParallelPlan

# Storage and compute dtypes by the one name each has everywhere (CLI, nodes, convert, docs).
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp8_e4m3fn": torch.float8_e4m3fn}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
PRECISIONS = ("auto", "bf16", "fp16", "fp32", "fp8_e4m3fn")
MEMORY_PRESETS = ("balanced", "full", "low", "12gb")
# PyTorch SDPA backends (exact), then installed kernels chosen per model (runtime/attention.py): FlashAttention 3 and
# 4 are exact (bf16), SageAttention quantises Q/K to int8 (changes the result a little).
ATTENTION_CHOICES = ("auto", "flash", "cudnn", "efficient", "math", "flash3", "flash4", "sage")


def dtype_from_name(name: str, what: str = "dtype", allowed: tuple[str, ...] | None = None) -> torch.dtype:
    allowed = allowed or tuple(DTYPES)
    if name not in allowed:
        raise InputError(f"unknown {what} '{name}'; choose one of {', '.join(allowed)}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_NAMES[dtype]


def default_compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs (as the official code), fp32 on CPUs (where bf16 matmuls are slow and add nothing)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


@dataclass(frozen=True)
class MemoryPlan:
    """What a memory preset means for the models."""

    keep_resident: bool  # models stay on the device between phases
    fp8_storage: bool  # large networks' matrices stored in fp8
    stream_blocks: bool  # transformer blocks streamed from host memory (CUDA only)
    keep_while_fits: bool = False  # a model stays after its phase while the next phase still fits beside it
    stream_all: bool = False  # T5 and the reference network stream their blocks too (CUDA only)
    device_budget_gb: float | None = None  # streamed blocks kept resident only as far as this budget allows
    vae_decode_tiles: bool = False  # decode in spatial tiles (lower peak; changes the frames slightly)


MEMORY_PLANS = {
    "full": MemoryPlan(keep_resident=True, fp8_storage=False, stream_blocks=False),
    "balanced": MemoryPlan(keep_resident=False, fp8_storage=False, stream_blocks=False, keep_while_fits=True),
    "low": MemoryPlan(keep_resident=False, fp8_storage=True, stream_blocks=True),
    "12gb": MemoryPlan(keep_resident=False, fp8_storage=True, stream_blocks=True, stream_all=True,
                       device_budget_gb=10.0, vae_decode_tiles=True),
}


def compile_supported(device: torch.device) -> bool:
    """Whether regional torch.compile is the default here: a CUDA device with Triton importable (inductor's GPU
    code generator). CPUs stay eager: compiling the tiny CPU models costs more than it saves."""
    if device.type != "cuda":
        return False
    import importlib.util

    return importlib.util.find_spec("triton") is not None


@dataclass(frozen=True)
class EngineOptions:
    """How the engine runs; independent of what is rendered (steps, seed, ... are render settings)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32  # compute dtype
    memory: str = "balanced"
    fp8_storage: bool = False
    attention: str = "auto"
    compile: bool = False
    fp8_matmul: bool = False
    parallel: ParallelPlan = ParallelPlan()  # one video across processes (runtime/parallel_plan.py); not in the key

    @classmethod
    def resolve(cls, device: str | torch.device | None = None, precision: str = "auto", memory: str = "balanced",
                attention: str = "auto", compile: bool | None = None, fp8_matmul: bool = False,
                parallel: ParallelPlan | None = None) -> EngineOptions:
        """`compile=None`: on where `compile_supported` (CUDA + Triton), else eager; True/False force it.
        `parallel` (ParallelPlan.resolve): each process of a parallel render takes the GPU of its LOCAL_RANK."""
        parallel = parallel or ParallelPlan()
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if parallel.active and device.type == "cuda":
            if device.index is not None:
                raise InputError("--parallel gives each process the GPU of its LOCAL_RANK; use --device cuda, not "
                                 f"{device}")
            # LOCAL_WORLD_SIZE, not LOCAL_RANK: every process refuses alike (the others would wait for it)
            if torch.cuda.is_available() and parallel.local_world_size > torch.cuda.device_count():
                raise InputError(f"{parallel.local_world_size} processes on this machine, one GPU each, but PyTorch "
                                 f"sees {torch.cuda.device_count()} GPUs; start at most that many per machine")
            device = torch.device("cuda", parallel.local_rank)
        if precision not in PRECISIONS:
            raise InputError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
        if memory not in MEMORY_PLANS:
            raise InputError(f"unknown memory preset '{memory}'; choose one of {', '.join(MEMORY_PRESETS)}")
        if attention not in ATTENTION_CHOICES:
            raise InputError(f"unknown attention kernel '{attention}'; choose one of {', '.join(ATTENTION_CHOICES)}")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu or install "
                             "a CUDA build of PyTorch")
        from .attention import INSTALLED, check_installed_kernel

        if attention in INSTALLED:  # refused here, before any model loads
            check_installed_kernel(attention, device)
        plan = MEMORY_PLANS[memory]
        compute = default_compute_dtype(device) if precision in ("auto", "fp8_e4m3fn") else DTYPES[precision]
        compiled = compile_supported(device) if compile is None else bool(compile)
        return cls(device=device, dtype=compute, memory=memory, fp8_storage=plan.fp8_storage or
                   precision == "fp8_e4m3fn", attention=attention, compile=compiled, fp8_matmul=fp8_matmul,
                   parallel=parallel)

    @property
    def plan(self) -> MemoryPlan:
        return MEMORY_PLANS[self.memory]

    @property
    def keep_resident(self) -> bool:
        return self.plan.keep_resident

    @property
    def stream_blocks(self) -> bool:
        return self.plan.stream_blocks and self.device.type == "cuda"

    def identity(self) -> dict:
        """What of these options changes a frame (part of a render key)."""
        identity = {"dtype": dtype_name(self.dtype), "fp8_storage": self.fp8_storage, "fp8_matmul": self.fp8_matmul,
                    "compile": self.compile, "device": self.device.type}
        if self.plan.vae_decode_tiles:  # only presets that change the decoded frames add to the key
            identity["vae_decode_tiles"] = True
        if self.attention in ("sage",):
            identity["attention"] = self.attention
        return identity


def check_number(name: str, value: float, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """A finite number within [low, high] (open ends where asked), or a one-line InputError naming the range."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    below = low is not None and (number <= low if low_open else number < low)
    above = high is not None and (number >= high if high_open else number > high)
    if not math.isfinite(number) or below or above:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        span = f"{left}{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}{right}"
        raise InputError(f"{name} must be a finite number in {span}, got {value}")
    return number


def check_integer(name: str, value: int, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            if float(value) != int(value):
                raise ValueError
            value = int(value)
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"{name} must be a whole number, got {value!r}") from None
    if (low is not None and value < low) or (high is not None and value > high):
        raise InputError(f"{name} must be between {low} and {high}, got {value}")
    return value
