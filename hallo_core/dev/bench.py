"""`bench`: speed and memory of the Hallo3 engine, at full size (GPU) or tiny size (CPU), with random weights.

Measured in one run, on whatever device it runs:
* seconds per denoising step (one batched [uncond, cond] transformer call) of the engine's default on this device
  (regional torch.compile on CUDA GPUs with Triton, eager elsewhere), per 49-frame clip (50 steps, VAE encode of
  the condition and decode of 13 latent frames) and per output second (a clip adds 47 frames = 1.88 s);
* where the time goes: a torch profiler summary of one step and of the VAE decode, split into attention, matrix
  multiplications (and convolutions) and the rest;
* the share of a clip spent outside the transformer; peak GPU memory of the denoising and VAE phases (CUDA only);
* model load time and peak host memory growth while loading the transformer from safetensors;
* speed options against the default, side by side, as ratios, with their deviation from the default output:
  compile (the other state than the default, with the compile time of a fresh process and of a second process
  using torch's persistent caches), row-wise fp8 matmul, fp8 weight storage, the calibrated step cache and the
  late-step CFG cache at several settings, half the steps, attention kernels.
A JSON record is written and a row appended to docs/benchmarks.md with the command that produced it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from ..errors import InputError
from ..hallo3.checkpoint import CONFIG_KEY, FORMAT_KEY, FORMATS, load_transformer, store_in_fp8
from ..hallo3.config import Hallo3Config
from ..hallo3.denoiser import GuidedDenoiser, LateCfgCache, build_clip_conditioning
from ..hallo3.loaders import prepare_transformer
from ..hallo3.sampler import generator_noise, sample_vp_dpmpp_2m, sat_schedule
from ..hallo3.step_cache import CalibratedStepCache, CalibrationRecorder, fit_calibration
from ..hallo3.transformer import Hallo3Transformer
from ..loading.safetensors_writer import write_safetensors
from ..runtime.attention import INSTALLED, installed_kernel
from ..runtime.options import DTYPES, MEMORY_PRESETS, compile_supported, dtype_name
from .bench_support import device_name, profile_split, random_module, random_vae, sync
from .host_memory import HostMemoryPeak
from .preset_bench import preset_rows, run_preset_benchmark
from .tiny_transformer import tiny_config

NEW_SECONDS_PER_CLIP = 47 / 25
# bench --options
OPTIONS = ("compile", "fp8_matmul", "fp8_storage", "step_cache", "cfg_cache", "steps", "attention")
STEP_CACHE_THRESHOLDS = (0.1, 0.2, 0.3)
CFG_CACHE_SHARES = (0.3, 0.5)


def _config(size: str, layers: int | None) -> Hallo3Config:
    config = Hallo3Config() if size == "full" else tiny_config(32, 5 * 12 * 32)
    return dataclasses.replace(config, num_layers=layers) if layers is not None else config


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


def _clock(device: torch.device) -> float:
    """Wall time on a GPU; on a CPU the process's CPU time, which other jobs on a shared machine do not inflate
    (ratios between variants stay fair; the figures are CPU seconds over all of torch's threads)."""
    return time.perf_counter() if device.type == "cuda" else time.process_time()


def _time_steps(denoiser: GuidedDenoiser, x: torch.Tensor, steps: int, device: torch.device) -> list[float]:
    times = []
    denoiser(x, 0)  # warm-up (and the compile, for a compiled model)
    for step in range(steps):
        sync(device)
        started = _clock(device)
        denoiser(x, step % denoiser.schedule.num_steps)
        sync(device)
        times.append(_clock(device) - started)
    return times


def _sample(model, conditioning, steps: int, seed: int, wrapper=None, late_cfg: float = 0.0) -> torch.Tensor:
    """The sampled latents of `steps` steps (what the deviations compare), with a step wrapper or CFG cache."""
    config = model.config
    device = next(model.parameters()).device
    schedule = sat_schedule(steps)
    generator = torch.Generator("cpu").manual_seed(seed)
    shape = (1, config.latent_frames, config.out_channels, config.latent_height, config.latent_width)
    x = torch.randn(shape, generator=generator).to(device)
    denoiser = GuidedDenoiser(model, conditioning, schedule, late_cfg=LateCfgCache(late_cfg) if late_cfg else None)
    with wrapper.attached(model) if wrapper is not None else contextlib.nullcontext():
        return sample_vp_dpmpp_2m(denoiser, x, schedule, generator_noise(generator))


def _timed_sample(model, conditioning, steps: int, device, **kwargs) -> tuple[float, torch.Tensor]:
    """The fastest of 3 sampled runs on a CPU (other load on a shared machine only ever adds time), of one on a GPU
    (a benchmark has it to itself), and its latents."""
    best = float("inf")
    for _ in range(1 if device.type == "cuda" else 3):
        sync(device)
        started = _clock(device)
        latents = _sample(model, conditioning, steps, 3, **kwargs)
        sync(device)
        best = min(best, _clock(device) - started)
    return best, latents


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
        started = _clock(device)
        run()
        sync(device)
        result[name] = _clock(device) - started
        if device.type == "cuda":
            result[name.replace("_s", "_peak_gpu_mb")] = torch.cuda.max_memory_allocated(device) / 2**20
    result["decode_profile"] = profile_split(lambda: wrapper.decode(latents), device)
    # The 12gb preset's decode: 2 x 2 spatial tiles; its time, peak and deviation from the official decode.
    official = wrapper.decode(latents)
    wrapper.decode_tiles = True
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    started = _clock(device)
    tiled = wrapper.decode(latents)
    sync(device)
    result["tiled_decode"] = {"seconds": _clock(device) - started, **_deviation(official, tiled)}
    if device.type == "cuda":
        result["tiled_decode"]["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
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
                  compile_blocks: bool | None = None, options_wanted: set[str] | None = None) -> dict:
    """`compile_blocks`: the default's compile state (None: the engine's default on this device)."""
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    config = _config(size, layers)
    compiled = compile_supported(device) if compile_blocks is None else compile_blocks
    record = {"size": size, "layers": config.num_layers, "device": device_name(device),
              "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__, "steps_timed": steps,
              "default_compiled": compiled}

    model = _random_model(config, device, dtype)
    if load_only:  # e.g. full width on a CPU, where a step would take an hour
        record.update(_load_measurement(model, dtype))
        return record
    conditioning = _conditioning(model, device, dtype)
    eager_model = model
    if compiled:
        model = prepare_transformer(_random_model(config, device, dtype), device, compile_blocks=True)
    shape = (1, config.latent_frames, config.out_channels, config.latent_height, config.latent_width)
    x = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(2)).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    denoiser = GuidedDenoiser(model, conditioning, sat_schedule(50))
    record["step_s"] = statistics.median(_time_steps(denoiser, x, steps, device))
    record["step_profile"] = profile_split(lambda: denoiser(x, 1), device)
    if device.type == "cuda":
        record["host_syncs_in_step"] = _host_syncs(lambda: denoiser(x, 2))
    if device.type == "cuda":
        record["denoise_peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    record.update(_vae_times(device, dtype, size, config))
    clip = 50 * record["step_s"] + record["encode_s"] + record["decode_s"]
    record.update(clip_s=clip, per_output_second_s=clip / NEW_SECONDS_PER_CLIP,
                  outside_transformer_share=(record["encode_s"] + record["decode_s"]) / clip)

    # Options, side by side with the default, as ratios and deviations of the sampled latents.
    want = lambda name: name in options_wanted if options_wanted is not None else (  # noqa: E731
        name != "compile" or device.type == "cuda")  # compiling on a CPU only when asked
    options = {}
    default_time, default = _timed_sample(model, conditioning, quality_steps, device)

    def against_default(variant: Hallo3Transformer, **extra) -> dict:
        """A variant's step time as a ratio to the default's, and its sampled latents' deviation."""
        times = _time_steps(GuidedDenoiser(variant, conditioning, sat_schedule(50)), x, steps, device)
        return {"speed_ratio": record["step_s"] / statistics.median(times), "step_s": statistics.median(times),
                **extra, **_deviation(default, _sample(variant, conditioning, quality_steps, 3))}

    if want("fp8_matmul"):
        fp8 = prepare_transformer(_random_model(config, device, dtype), device, fp8_matmul=True,
                                  compile_blocks=compiled)
        options["fp8_matmul"] = _guarded(lambda: against_default(
            fp8, weights_ratio=_block_weight_bytes(fp8) / _block_weight_bytes(eager_model)))
        del fp8
    if want("fp8_storage"):
        fp8 = prepare_transformer(store_in_fp8(_random_model(config, device, dtype), dtype), device,
                                  weight_casting=True, compile_blocks=compiled)
        options["fp8_storage"] = _guarded(lambda: against_default(
            fp8, weights_ratio=_weight_bytes(fp8) / _weight_bytes(eager_model)))
        del fp8
    if want("step_cache"):
        options.update(_step_cache_options(model, conditioning, quality_steps, device, default, default_time))
    for share in CFG_CACHE_SHARES if want("cfg_cache") else ():  # a fresh LateCfgCache per sampled run
        seconds, latents = _timed_sample(model, conditioning, quality_steps, device, late_cfg=share)
        options[f"cfg_cache_{share}"] = {"speed_ratio": default_time / seconds, **_deviation(default, latents)}
    half = max(1, quality_steps // 2)
    if want("steps"):
        options[f"steps_{half}_vs_{quality_steps}"] = {"speed_ratio": quality_steps / half,
                                                       **_deviation(default, _sample(model, conditioning, half, 3))}
    for backend in ("flash", "cudnn", "efficient") if want("attention") and device.type == "cuda" else ():
        options[f"attention_{backend}"] = _attention_option(backend, model, against_default)
    for name in INSTALLED if want("attention") and device.type == "cuda" else ():
        options[f"attention_{name}"] = _attention_option(name, model, against_default, installed=True)
    if want("compile"):  # last: inductor's compile workers keep using the machine after compiling
        options["eager" if compiled else "compile_blocks"] = _compile_option(
            compiled, eager_model, config, device, dtype, conditioning, x, against_default, size, layers)
    record["options"] = options
    if size == "tiny" or os.environ.get("HALLO_BENCH_LOAD") == "1":
        record.update(_load_measurement(eager_model, dtype))
    return record


def _step_cache_options(model, conditioning, steps: int, device, default, default_time: float) -> dict:
    """Calibrate on one sampled run of another seed (as `calibrate` does on one render), then sample with the
    cache at each threshold: speed against the default's sampling time, deviation, steps skipped."""
    recorder = CalibrationRecorder(steps)
    _sample(model, conditioning, steps, seed=7, wrapper=recorder)
    calibration = fit_calibration(recorder.pairs(), steps, json.loads(model.config.to_json()), 0)
    options = {}
    for threshold in STEP_CACHE_THRESHOLDS:
        caches = []

        def fresh(threshold=threshold, caches=caches):  # one cache per sampled run, as one per clip
            caches.append(CalibratedStepCache(threshold, calibration, steps))
            return caches[-1]

        seconds, latents = _timed_sample(model, conditioning, steps, device, wrapper=_Fresh(fresh))
        options[f"step_cache_{threshold}"] = {"speed_ratio": default_time / seconds, "skipped": caches[-1].skipped,
                                              "of_steps": steps, **_deviation(default, latents)}
    return options


class _Fresh:
    """A wrapper factory with the wrappers' `attached` interface: a new step cache for every sampled run."""

    def __init__(self, make):
        self.make = make

    def attached(self, model):
        return self.make().attached(model)


def _compile_option(compiled_default: bool, eager_model, config, device, dtype, conditioning, x, against_default,
                    size: str, layers: int | None) -> dict:
    """The other compile state than the default, and the compile time of a fresh process with an empty cache folder
    and of a second process with the folder the first one filled (torch's persistent caches)."""
    def measure():
        model = eager_model if compiled_default else prepare_transformer(
            _random_model(config, device, dtype), device, compile_blocks=True)
        return against_default(model, **_compile_times(size, device, dtype, layers))

    return _guarded(measure)


def _compile_times(size: str, device: torch.device, dtype: torch.dtype, layers: int | None) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": folder}
        times = []
        for _ in range(2):
            probe = (f"from hallo_core.dev.bench import compile_probe; compile_probe({size!r}, {str(device)!r}, "
                     f"{dtype_name(dtype)!r}, {layers!r})")
            result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                                    cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
            if result.returncode != 0:
                raise RuntimeError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "probe failed")
            times.append(json.loads(result.stdout.strip().splitlines()[-1])["first_call_s"])
    return {"compile_s_cold_process": times[0], "compile_s_warm_process": times[1]}


def compile_probe(size: str, device: str, dtype: str, layers: int | None) -> None:
    """In a fresh process: the first call of a compiled model (compile included) and a later one, as JSON."""
    device = torch.device(device)
    config = _config(size, layers)
    model = prepare_transformer(_random_model(config, device, DTYPES[dtype]), device, compile_blocks=True)
    conditioning = _conditioning(model, device, DTYPES[dtype])
    x = torch.randn(1, config.latent_frames, config.out_channels, config.latent_height, config.latent_width,
                    device=device)
    denoiser = GuidedDenoiser(model, conditioning, sat_schedule(50))
    sync(device)
    started = time.perf_counter()
    denoiser(x, 0)
    sync(device)
    first = time.perf_counter() - started
    print(json.dumps({"first_call_s": first}))


def _attention_option(name: str, model: Hallo3Transformer, against_default, installed: bool = False) -> dict:
    """One kernel for every attention call, against the default (`auto`: PyTorch's choice)."""
    from ..runtime.attention import sdpa_kernel, using_attention_kernel

    def measure():
        kernel = installed_kernel(name, next(model.parameters()).device) if installed else sdpa_kernel(name)
        with using_attention_kernel(model, kernel):
            return against_default(model)

    return _guarded(measure)


def _host_syncs(run) -> str:
    """'none' when one step runs without the host waiting for the device (CUDA's sync debug mode raises on any
    synchronising call), else the first synchronising call's message."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        run()
        return "none"
    except RuntimeError as error:
        return str(error).splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _guarded(measure) -> dict:
    """An option's figures, or why it could not be measured here (a kernel that does not support these shapes,
    a package that is not installed, no C compiler for inductor): the other figures still count."""
    try:
        return measure()
    except Exception as error:
        message = str(error).splitlines()[0] if str(error) else ""
        return {"error": f"{type(error).__name__}: {message}"}


def _weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _block_weight_bytes(model: Hallo3Transformer) -> int:
    return _weight_bytes(model.transformer_blocks)


def _split(profile: dict | None) -> str:
    if not profile:
        return "-"
    total = profile["total_ms"] or 1.0
    return (f"attention {profile['attention_ms'] / total:.0%}, matmul {profile['matmul_ms'] / total:.0%}, "
            f"other {profile['other_ms'] / total:.0%}")


def _option_text(name: str, option: dict) -> str:
    if "error" in option:
        return f"{name}: not measured ({option['error']})"
    text = f"{name}: x{option['speed_ratio']:.2f} speed, PSNR {option['psnr_db']:.1f} dB, max {option['max_abs']:.2g}"
    if "skipped" in option:
        text += f", {option['skipped']}/{option['of_steps']} steps skipped"
    if "weights_ratio" in option:
        text += f", weights x{option['weights_ratio']:.2f}"
    if "compile_s_cold_process" in option:
        text += (f", compile {option['compile_s_cold_process']:.1f} s fresh / "
                 f"{option['compile_s_warm_process']:.1f} s with the cache")
    return text


def benchmark_row(record: dict, command: str) -> str:
    if "step_s" not in record:  # load only
        return (f"| {datetime.date.today()} | `{command}` | {record['device']} | {record['size']} width, "
                f"{record['layers']} layers, {record['dtype']} | - | - | - | - | - | - | {record['load_s']:.2f} s, "
                f"+{record['load_peak_host_growth_mb']:.0f} MB for {record['weights_mb']:.0f} MB | - |")
    options = "; ".join(_option_text(name, o) for name, o in record["options"].items())
    gpu = f"{record['denoise_peak_gpu_mb']:.0f}" if "denoise_peak_gpu_mb" in record else "-"
    load = f"{record['load_s']:.2f} s, +{record['load_peak_host_growth_mb']:.0f} MB for {record['weights_mb']:.0f} MB" \
        if "load_s" in record else "-"
    default = f"{record['size']} {record['dtype']}, {'compiled' if record['default_compiled'] else 'eager'}"
    if "host_syncs_in_step" in record:
        default += f", host syncs in a step: {record['host_syncs_in_step']}"
    return (f"| {datetime.date.today()} | `{command}` | {record['device']} | {default} | "
            f"{record['step_s']:.3f} | {record['clip_s']:.1f} | {record['per_output_second_s']:.1f} | "
            f"{record['outside_transformer_share']:.1%} | step: {_split(record.get('step_profile'))}; decode: "
            f"{_split(record.get('decode_profile'))} | {gpu} | {load} | {_tiled(record)}{options} |")


def _tiled(record: dict) -> str:
    tiled = record.get("tiled_decode")
    if not tiled:
        return ""
    peak = f", peak {tiled['peak_gpu_mb']:.0f} MB against {record['decode_peak_gpu_mb']:.0f}" \
        if "peak_gpu_mb" in tiled else ""
    return (f"tiled decode (12gb): {tiled['seconds'] / record['decode_s']:.2f}x the decode time{peak}, PSNR "
            f"{tiled['psnr_db']:.1f} dB, max {tiled['max_abs']:.2g}; ")


def _known(listed: str, known: tuple[str, ...], flag: str) -> list[str]:
    names = [name.strip() for name in listed.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise InputError(f"{flag}: unknown {', '.join(unknown) or 'empty list'}; choose from {','.join(known)}")
    return names


def main(args) -> int:
    dtype = None if args.precision in (None, "auto") else DTYPES[args.precision]
    command = "python -m hallo_core bench " + " ".join(sys.argv[2:])
    if getattr(args, "backbone", "hallo3") != "hallo3":
        from .unet_bench import run_unet_benchmark, unet_rows

        presets = tuple(_known(args.presets or "full,balanced,low", MEMORY_PRESETS, "--presets"))
        record = run_unet_benchmark(args.size, args.device, dtype, args.steps, presets, version=args.backbone)
        rows = unet_rows(record, command)
    elif args.presets:
        presets = tuple(_known(args.presets, MEMORY_PRESETS, "--presets"))
        record = run_preset_benchmark(args.size, args.device, dtype, args.steps, presets,
                                      layers=args.layers, compile_blocks=args.compile)
        rows = preset_rows(record, command)
    else:
        wanted = set(_known(args.options, OPTIONS, "--options")) if args.options else None
        if wanted is None and args.compile:  # --compile on a CPU: the compiled state as an option too
            wanted = set(OPTIONS)
        record = run_benchmark(args.size, args.device, dtype, args.steps, layers=args.layers,
                               load_only=args.load_only, compile_blocks=None if args.compile else args.compile,
                               options_wanted=wanted)
        rows = [benchmark_row(record, command)]
    record["command"] = command
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
    print(json.dumps(record, indent=1))
    if args.docs:
        with open(args.docs, "a") as f:
            f.writelines(row + "\n" for row in rows)
    return 0
