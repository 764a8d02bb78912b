"""`bench`: speed and memory of the Hallo3 engine, at full size (GPU) or tiny size (CPU), with random weights.

Measured in one run, on whatever device it runs:
* seconds per denoising step (one batched [uncond, cond] transformer call), per 49-frame clip (50 steps, VAE encode
  of the condition and decode of 13 latent frames) and per output second (a clip adds 47 frames = 1.88 s);
* the share of a clip spent outside the transformer;
* peak GPU memory of the denoising and VAE phases (CUDA only);
* model load time and peak host memory growth while loading the transformer from safetensors;
* speed options against the default, side by side, as ratios, with their deviation from the default output:
  fp8 weight storage, fp8 matmul, step caching, half the steps.
A JSON record is written and a row appended to docs/benchmarks.md with the command that produced it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import statistics
import sys
import tempfile
import time

import torch

from ..errors import InputError
from ..hallo3.checkpoint import CONFIG_KEY, FORMAT_KEY, FORMATS, load_transformer, store_in_fp8
from ..hallo3.config import Hallo3Config
from ..hallo3.denoiser import GuidedDenoiser, build_clip_conditioning
from ..hallo3.loaders import prepare_transformer
from ..hallo3.sampler import generator_noise, sample_vp_dpmpp_2m, sat_schedule
from ..hallo3.step_cache import StepCache
from ..hallo3.transformer import Hallo3Transformer
from ..loading.safetensors_writer import write_safetensors
from ..runtime.options import DTYPES, MEMORY_PRESETS
from .bench_support import device_name, random_module, random_vae, sync
from .host_memory import HostMemoryPeak
from .preset_bench import preset_rows, run_preset_benchmark
from .tiny_transformer import tiny_config

NEW_SECONDS_PER_CLIP = 47 / 25
OPTIONS = ("step_cache", "steps", "fp8_storage", "fp8_matmul", "attention", "compile")  # bench --options


def _random_model(config: Hallo3Config, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Hallo3Transformer:
    return random_module(lambda: Hallo3Transformer(config), device, dtype, seed)


def _conditioning(model: Hallo3Transformer, device: torch.device, dtype: torch.dtype, seed: int = 1):
    config = model.config
    generator = torch.Generator(device).manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=generator, device=device)  # noqa: E731
    frames = 1 + 4 * (config.latent_frames - 1)
    window = (5, config.audio_input_dim // 5)
    condition = rand(1, config.latent_frames, config.out_channels, config.latent_height, config.latent_width)
    reference = [rand(1, config.tokens_per_frame, config.hidden_size).to(dtype) for _ in range(config.num_layers)]
    with torch.no_grad():
        kv = model.reference_key_values(reference)
        return build_clip_conditioning(model, condition, rand(1, config.text_length, config.text_embed_dim).to(dtype),
                                       rand(1, frames, *window).to(dtype), rand(1, 512), kv)


def _time_steps(denoiser: GuidedDenoiser, x: torch.Tensor, steps: int, device: torch.device) -> list[float]:
    times = []
    denoiser(x, 0)  # warm-up
    for step in range(steps):
        sync(device)
        started = time.perf_counter()
        denoiser(x, step % denoiser.schedule.num_steps)
        sync(device)
        times.append(time.perf_counter() - started)
    return times


def _sample(model, conditioning, steps: int, seed: int, cache: float = 0.0) -> torch.Tensor:
    config = model.config
    device = next(model.parameters()).device
    schedule = sat_schedule(steps)
    generator = torch.Generator("cpu").manual_seed(seed)
    shape = (1, config.latent_frames, config.out_channels, config.latent_height, config.latent_width)
    x = torch.randn(shape, generator=generator).to(device)
    denoiser = GuidedDenoiser(model, conditioning, schedule, step_cache=StepCache(cache) if cache else None)
    return sample_vp_dpmpp_2m(denoiser, x, schedule, generator_noise(generator))


def _deviation(reference: torch.Tensor, other: torch.Tensor) -> dict:
    difference = (other.float() - reference.float())
    mse = float(difference.square().mean())
    peak = float(reference.float().abs().max())
    return {"max_abs": float(difference.abs().max()), "mean_abs": float(difference.abs().mean()),
            "psnr_db": float(10 * torch.log10(torch.tensor(4 * peak**2 / max(mse, 1e-20))))}


def _vae_times(device: torch.device, dtype: torch.dtype, size: str, config: Hallo3Config) -> dict:
    wrapper = random_vae(size).to(device=device, dtype=dtype)
    height, width = config.pixel_size
    generator = torch.Generator("cpu").manual_seed(0)
    pixels = torch.rand(1, 3, 3, height, width, generator=generator) * 2 - 1
    latents = torch.randn(1, 16, config.latent_frames, config.latent_height, config.latent_width, generator=generator)
    result = {}
    for name, run in (("encode_s", lambda: wrapper.encode(pixels, torch.Generator().manual_seed(0))),
                      ("decode_s", lambda: wrapper.decode(latents))):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        started = time.perf_counter()
        run()
        sync(device)
        result[name] = time.perf_counter() - started
        if device.type == "cuda":
            result[name.replace("_s", "_peak_gpu_mb")] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def _load_measurement(model: Hallo3Transformer, dtype: torch.dtype) -> dict:
    """Write the model to safetensors, then time loading it while sampling host memory."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "hallo3_transformer.safetensors")
        state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
        write_safetensors(path, [(k, tuple(v.shape), v.dtype, (lambda v=v: v)) for k, v in state.items()],
                          {FORMAT_KEY: FORMATS["main"], CONFIG_KEY: model.config.to_json()})
        size = sum(v.numel() * v.element_size() for v in state.values())
        del state
        with HostMemoryPeak() as memory:
            started = time.perf_counter()
            loaded = load_transformer(path, dtype=dtype, device="cpu")
            seconds = time.perf_counter() - started
        del loaded
    return {"load_s": seconds, "weights_mb": size / 2**20, "load_peak_host_growth_mb": memory.growth / 2**20}


def run_benchmark(size: str = "tiny", device: str = "cpu", dtype: torch.dtype | None = None, steps: int = 5,
                  quality_steps: int = 8, layers: int | None = None, load_only: bool = False,
                  compile_blocks: bool = False, options_wanted: set[str] | None = None) -> dict:
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    config = Hallo3Config() if size == "full" else tiny_config(32, 5 * 12 * 32)
    if layers is not None:
        config = dataclasses.replace(config, num_layers=layers)
    record = {"size": size, "layers": config.num_layers, "device": device_name(device),
              "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__, "steps_timed": steps}

    model = _random_model(config, device, dtype)
    if load_only:  # e.g. full width on a CPU, where a step would take an hour
        record.update(_load_measurement(model, dtype))
        return record
    conditioning = _conditioning(model, device, dtype)
    shape = (1, config.latent_frames, config.out_channels, config.latent_height, config.latent_width)
    x = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(2)).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_times = _time_steps(GuidedDenoiser(model, conditioning, sat_schedule(50)), x, steps, device)
    record["step_s"] = statistics.median(step_times)
    if device.type == "cuda":
        record["denoise_peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    record.update(_vae_times(device, dtype, size, config))
    clip = 50 * record["step_s"] + record["encode_s"] + record["decode_s"]
    record.update(clip_s=clip, per_output_second_s=clip / NEW_SECONDS_PER_CLIP,
                  outside_transformer_share=(record["encode_s"] + record["decode_s"]) / clip)

    # Speed options, side by side with the default, as ratios and deviations of the sampled latents.
    want = lambda name: options_wanted is None or name in options_wanted  # noqa: E731
    options = {}
    default = _sample(model, conditioning, quality_steps, seed=3)
    for threshold in (0.05, 0.3) if want("step_cache") else ():
        times = _time_cached(model, conditioning, quality_steps, device, threshold)
        options[f"step_cache_{threshold}"] = {
            "speed_ratio": times["default"] / times["cached"],
            **_deviation(default, _sample(model, conditioning, quality_steps, 3, cache=threshold))}
    half = max(1, quality_steps // 2)
    if want("steps"):
        options[f"steps_{half}_vs_{quality_steps}"] = {"speed_ratio": quality_steps / half,
                                                       **_deviation(default, _sample(model, conditioning, half, 3))}

    def against_default(variant: Hallo3Transformer) -> dict:
        """A variant's step time as a ratio to the default's, and its sampled latents' deviation."""
        times = _time_steps(GuidedDenoiser(variant, conditioning, sat_schedule(50)), x, steps, device)
        return {"speed_ratio": record["step_s"] / statistics.median(times), "step_s": statistics.median(times),
                **_deviation(default, _sample(variant, conditioning, quality_steps, 3))}

    if want("fp8_storage"):
        fp8 = prepare_transformer(store_in_fp8(_random_model(config, device, dtype), dtype), device,
                                  weight_casting=True)
        options["fp8_storage"] = {**against_default(fp8), "weights_ratio": _weight_bytes(fp8) / _weight_bytes(model)}
        del fp8
    if want("fp8_matmul"):
        options["fp8_matmul"] = against_default(prepare_transformer(_random_model(config, device, dtype), device,
                                                                    fp8_matmul=True))
    for backend in ("flash", "cudnn", "efficient") if want("attention") and device.type == "cuda" else ():
        options[f"attention_{backend}"] = _attention_option(backend, model, against_default)
    if compile_blocks and want("compile"):
        options["compile_blocks"] = _compiled_option(_random_model(config, device, dtype), device, conditioning, x,
                                                     against_default)
    record["options"] = options
    if size == "tiny" or os.environ.get("HALLO_BENCH_LOAD") == "1":
        record.update(_load_measurement(model, dtype))
    return record


def _attention_option(backend: str, model: Hallo3Transformer, against_default) -> dict:
    """One SDPA kernel forced for every attention call, against the default (`auto`: PyTorch's choice)."""
    from ..runtime.attention import sdpa_kernel, using_attention_kernel

    try:
        with using_attention_kernel(model, sdpa_kernel(backend)):
            return against_default(model)
    except Exception as error:  # noqa: BLE001 - a kernel that does not support these shapes on this GPU
        return _failed(error)


def _compiled_option(model: Hallo3Transformer, device, conditioning, x, against_default) -> dict:
    """Regional torch.compile: the first call's compile time, then the step time as a ratio to eager."""
    try:
        compiled = prepare_transformer(model, device, compile_blocks=True)
        sync(device)
        started = time.perf_counter()
        GuidedDenoiser(compiled, conditioning, sat_schedule(50))(x, 0)
        sync(device)
        return {"compile_s": time.perf_counter() - started, **against_default(compiled)}
    except Exception as error:  # noqa: BLE001 - e.g. no C compiler for inductor; the other figures still count
        return _failed(error)


def _failed(error: Exception) -> dict:
    message = str(error).splitlines()[0] if str(error) else ""
    return {"error": f"{type(error).__name__}: {message}"}


def _time_cached(model, conditioning, steps: int, device: torch.device, threshold: float) -> dict:
    times = {}
    for name, cache in (("default", 0.0), ("cached", threshold)):
        sync(device)
        started = time.perf_counter()
        _sample(model, conditioning, steps, seed=3, cache=cache)
        sync(device)
        times[name] = time.perf_counter() - started
    return times


def _weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def benchmark_row(record: dict, command: str) -> str:
    if "step_s" not in record:  # load only
        return (f"| {datetime.date.today()} | `{command}` | {record['device']} | {record['size']} width, "
                f"{record['layers']} layers, {record['dtype']} | - | - | - | - | - | {record['load_s']:.2f} s, "
                f"+{record['load_peak_host_growth_mb']:.0f} MB for {record['weights_mb']:.0f} MB | - |")
    options = "; ".join(
        f"{name}: x{o['speed_ratio']:.2f} speed, PSNR {o['psnr_db']:.1f} dB" if "error" not in o else
        f"{name}: failed ({o['error']})" for name, o in record["options"].items())
    gpu = f"{record['denoise_peak_gpu_mb']:.0f}" if "denoise_peak_gpu_mb" in record else "-"
    load = f"{record['load_s']:.2f} s, +{record['load_peak_host_growth_mb']:.0f} MB for {record['weights_mb']:.0f} MB" \
        if "load_s" in record else "-"
    return (f"| {datetime.date.today()} | `{command}` | {record['device']} | {record['size']} {record['dtype']} | "
            f"{record['step_s']:.3f} | {record['clip_s']:.1f} | {record['per_output_second_s']:.1f} | "
            f"{record['outside_transformer_share']:.1%} | {gpu} | {load} | {options} |")


def _known(listed: str, known: tuple[str, ...], flag: str) -> list[str]:
    names = [name.strip() for name in listed.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise InputError(f"{flag}: unknown {', '.join(unknown) or 'empty list'}; choose from {','.join(known)}")
    return names


def main(args) -> int:
    dtype = None if args.precision in (None, "auto") else DTYPES[args.precision]
    command = "python -m hallo_core bench " + " ".join(sys.argv[2:])
    if args.presets:
        presets = tuple(_known(args.presets, MEMORY_PRESETS, "--presets"))
        record = run_preset_benchmark(args.size, args.device, dtype, args.steps, presets,
                                      layers=args.layers, compile_blocks=args.compile)
        rows = preset_rows(record, command)
    else:
        wanted = set(_known(args.options, OPTIONS, "--options")) if args.options else None
        record = run_benchmark(args.size, args.device, dtype, args.steps, layers=args.layers,
                               load_only=args.load_only, compile_blocks=args.compile, options_wanted=wanted)
        rows = [benchmark_row(record, command)]
    record["command"] = command
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
    print(json.dumps(record, indent=1))
    if args.docs:
        with open(args.docs, "a") as f:
            f.writelines(row + "\n" for row in rows)
    return 0
