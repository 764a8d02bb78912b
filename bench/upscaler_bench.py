"""Frames per second of the Hallo2 face upscaler pipeline, 480x720 -> 1920x2880 (scale 4), with random weights.

    python bench/upscaler_bench.py                      # CPU, tiny widths (the CPU row of docs/benchmarks.md)
    python bench/upscaler_bench.py --device cuda --full # GPU, the official network widths

Every stage runs for real: the SCRFD detector (a tiny stand-in ONNX from hallo_core.dev.tiny_frontends, so no weights
are needed; the real one is ~10 GFLOP), the alignment warp, the temporal CodeFormer on 16-frame windows (stride 12),
ParseNet, the background upsampling and the paste-back. The background is RealESRGAN x2plus through spandrel when
spandrel imports (random weights of the real architecture) and Lanczos alone otherwise; the row says which.
Timings are wall-clock after one warm-up window, with CUDA synchronised per stage; the stage split is the time spent
inside each component, so it adds up to a little less than the total.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hallo_core.dev.tiny_frontends import write_tiny_face_models  # noqa: E402
from hallo_core.upscaler.background import BackgroundUpscaler  # noqa: E402
from hallo_core.upscaler.face_alignment import ScrfdFaceDetector  # noqa: E402
from hallo_core.upscaler.face_parsing import ParseNet, ParseNetConfig, random_parsenet_state_dict  # noqa: E402
from hallo_core.upscaler.temporal_codeformer import TemporalCodeFormerConfig  # noqa: E402
from hallo_core.upscaler.video import UpscaleSettings, VideoFaceUpscaler  # noqa: E402
from hallo_core.upscaler.weights import load_temporal_codeformer, random_state_dict  # noqa: E402

TINY = TemporalCodeFormerConfig(dim_embd=64, n_head=4, n_layers=2, codebook_size=128, nf=32)
TINY_PARSENET = ParseNetConfig(encoder_channels=(32, 64, 64), res_depth=2, decoder_channels=(64, 32))


class Timer:
    def __init__(self, device):
        self.device = torch.device(device)
        self.seconds = defaultdict(float)

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            self.sync()
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self.sync()
            self.seconds[name] += time.perf_counter() - start
            return out

        return timed

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def spandrel_background(device, dtype):
    try:
        import spandrel
        from spandrel.architectures.ESRGAN import ESRGAN
    except Exception as exc:  # noqa: BLE001 - torchvision missing on CPU-only torch
        return None, f"lanczos only (spandrel unavailable: {type(exc).__name__})"
    net = ESRGAN(in_nc=3, out_nc=3, num_filters=64, num_blocks=23, scale=2)  # RealESRGAN x2plus
    descriptor = spandrel.ModelLoader().load_from_state_dict(net.state_dict())
    descriptor.to(device)
    descriptor.eval()
    descriptor.model.to(dtype)
    name = f"RealESRGAN x2plus ({str(dtype).split('.')[-1]}, tiles 400/40)"
    return BackgroundUpscaler.from_spandrel(descriptor), name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full", action="store_true", help="official widths (default: tiny widths)")
    parser.add_argument("--frames", type=int, default=28, help="frames timed after the warm-up (28 = 2 windows + 4)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=720)
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--lanczos", action="store_true", help="Lanczos background even if spandrel imports")
    parser.add_argument("--no-parsing", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    config = TemporalCodeFormerConfig() if args.full else TINY
    network = load_temporal_codeformer(random_state_dict(config, seed=0), config, device=device)
    parsenet = None
    if not args.no_parsing:
        parse_config = ParseNetConfig() if args.full else TINY_PARSENET
        parsenet = ParseNet(parse_config)
        parsenet.load_state_dict(random_parsenet_state_dict(parse_config))
        parsenet = parsenet.to(device).eval()
    background, background_name = (None, "lanczos only") if args.lanczos else \
        spandrel_background(device, torch.float16 if device.type == "cuda" else torch.float32)
    background = background or BackgroundUpscaler.lanczos()

    timer = Timer(device)
    with tempfile.TemporaryDirectory() as folder:
        faces = ({"center": (320, 224), "size": (160, 192), "score": 0.9},)
        write_tiny_face_models(folder, faces=faces)
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda" else None
        detector = ScrfdFaceDetector(os.path.join(folder, "scrfd_10g_bnkps.onnx"), providers=providers)
        detector.detect = timer.wrap("detect", detector.detect)
        upscaler = VideoFaceUpscaler(network, detector, background, parsenet, UpscaleSettings(scale=args.scale),
                                     device)
        upscaler.restore = timer.wrap("network", upscaler.restore)
        upscaler.background = timer.wrap("background", upscaler.background)
        import hallo_core.upscaler.video as video_module

        video_module.paste_face = timer.wrap("paste", video_module.paste_face)
        video_module.parsing_mask = timer.wrap("parsing", video_module.parsing_mask)
        video_module.align_faces = timer.wrap("align", video_module.align_faces)

        rng = np.random.default_rng(0)
        base = (rng.random((args.height, args.width, 3)) * 255).astype(np.uint8)
        warmup = 16
        frames = (np.roll(base, i, axis=1) for i in range(warmup + args.frames))
        stream = upscaler.stream(frames)
        for _ in range(warmup):  # the first window (compiles kernels, allocates)
            next(stream)
        timer.seconds.clear()
        timer.sync()
        start = time.perf_counter()
        count = 0
        for frame in stream:
            count += 1
        timer.sync()
        elapsed = time.perf_counter() - start

    out_h, out_w = frame.shape[:2]
    fps = count / elapsed
    width = "full widths" if args.full else f"tiny (nf {config.nf}, d {config.dim_embd}, {config.n_layers} layers)"
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"
    stages = ", ".join(f"{k} {1000 * v / count:.0f}" for k, v in sorted(timer.seconds.items(), key=lambda kv: -kv[1]))
    print(f"frames {count}, {elapsed:.2f} s, {fps:.3f} fps; ms per output frame: {stages}")
    print(f"| upscaler {args.height}x{args.width} -> {out_h}x{out_w} | {hardware} | torch {torch.__version__} | "
          f"{width} | background: {background_name} | parsing: {'no' if parsenet is None else 'yes'} | "
          f"{fps:.3f} fps ({1000 / fps:.0f} ms/frame) | {stages} |")


if __name__ == "__main__":
    main()
