"""What the benchmarks share: random full-size or tiny models made directly on the device, device synchronisation
and naming."""

from __future__ import annotations

import os
import platform
import statistics

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def start_peak(device: torch.device) -> None:
    """Free cached blocks and restart the peak-memory counter (CUDA), so a run's peak is its own."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def median_interval(times: list[float]) -> float | None:
    """Median time between successive events (the step time from per-step clock readings)."""
    return statistics.median(b - a for a, b in zip(times, times[1:])) if len(times) > 1 else None


def random_module(build, device: torch.device, dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    """`build()`'s module with random weights (norm scales 1, the rest N(0, 0.02)) made directly on the device.
    Buffers too (e.g. the motion modules' positional table, which a checkpoint fills): `to_empty` leaves them as
    whatever memory the allocator hands back, NaN included."""
    with torch.device("meta"):
        model = build().to(dtype)
    model = model.to_empty(device=device)
    generator = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1 and name.endswith("weight"):
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=generator, device=device, dtype=torch.float32) * 0.02)
        for buffer in model.buffers():
            if buffer.is_floating_point():
                buffer.copy_(torch.randn(buffer.shape, generator=generator, device=device, dtype=torch.float32) * 0.02)
            else:
                buffer.zero_()
    return model.eval()


def random_vae(size: str):
    """The CogVideoX VAE (`full`: the 5B model's sizes, diffusers' defaults; `tiny`: the tiny models' sizes), with
    diffusers' own random initialisation, in float32 on the CPU."""
    from diffusers import AutoencoderKLCogVideoX

    from ..hallo3.vae import CogVideoXVAE
    from ..hallo3.vae_checkpoint import TINY_BLOCK_OUT_CHANNELS

    with torch.random.fork_rng(devices=[]):  # the same weights every time, without reseeding the caller's RNG
        torch.manual_seed(0)
        if size == "full":
            vae = AutoencoderKLCogVideoX()
        else:
            vae = AutoencoderKLCogVideoX(block_out_channels=TINY_BLOCK_OUT_CHANNELS, layers_per_block=1,
                                         norm_num_groups=min(TINY_BLOCK_OUT_CHANNELS),
                                         down_block_types=("CogVideoXDownBlock3D",) * 4,
                                         up_block_types=("CogVideoXUpBlock3D",) * 4)
    return CogVideoXVAE(vae.eval())


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()} ({torch.get_num_threads()} threads)"


ATTENTION_OPS = ("attention", "flash", "sdpa", "sageattn", "fmha", "cudnn_mha")
MATMUL_OPS = ("mm", "addmm", "bmm", "matmul", "linear", "_scaled_mm", "gemm", "conv", "cutlass", "sm90_xmma",
              "cublas", "triton_tem")


def profile_split(run, device: torch.device) -> dict:
    """Where one call of `run` spends its time: torch profiler self time (device time on CUDA, CPU time on a CPU),
    summed into attention, matrix multiplications (with convolutions) and the rest, in milliseconds."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    run()  # warm-up outside the trace
    sync(device)
    with profile(activities=activities) as trace:
        run()
        sync(device)
    split = {"attention_ms": 0.0, "matmul_ms": 0.0, "other_ms": 0.0}
    for event in trace.key_averages():
        us = event.self_device_time_total if cuda else event.self_cpu_time_total
        if us <= 0 or (not cuda and event.key.startswith(("ProfilerStep", "[memory]"))):
            continue
        name = event.key.lower()
        if cuda and getattr(event, "device_type", None) is not None and "cuda" not in str(event.device_type).lower():
            continue  # CPU-side records carry no device time anyway
        if any(word in name for word in ATTENTION_OPS):
            split["attention_ms"] += us / 1e3
        elif any(word in name for word in MATMUL_OPS) and "norm" not in name:
            split["matmul_ms"] += us / 1e3
        else:
            split["other_ms"] += us / 1e3
    split["total_ms"] = sum(split.values())
    return split
