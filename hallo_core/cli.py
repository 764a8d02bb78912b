"""Command line: `python -m hallo_core <command>` (docs/architecture.md, "Command line").

A user mistake prints one line starting with "error:" and exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import HalloError


def _parity(args) -> int:
    from .dev.parity import run_parity

    result = run_parity(args.weights, args.io, args.config, device=args.device)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


def _convert(args) -> int:
    from .convert import convert

    for path in convert(args.src, args.dst, args.dtype, args.backbone):
        print(path)
    return 0


class _ProgressBar:
    """tqdm bar over all denoising steps of the render, with the clip in the description."""

    def __init__(self):
        self.bar = None

    def __call__(self, event) -> None:
        from tqdm import tqdm

        if event.phase == "denoise":
            if self.bar is None:
                self.bar = tqdm(total=event.clips * event.steps, unit="step", dynamic_ncols=True)
            self.bar.set_description(f"clip {event.clip + 1}/{event.clips}")
            self.bar.n = event.clip * event.steps + event.step
            self.bar.refresh()
        elif event.phase == "prepare" and event.message:
            print(f"{event.message}...", file=sys.stderr)
        elif event.phase == "write":
            self.close()
            print(f"writing {event.message}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _generate(args) -> int:
    from .backbones import load_backbone
    from .generate import generate
    from .runtime.options import EngineOptions

    from .runtime.parallel_plan import ParallelPlan

    plan = ParallelPlan.resolve(args.parallel, args.ulysses_degree)
    options = EngineOptions.resolve(args.device, args.precision, args.memory, args.attention, args.compile,
                                    args.fp8_matmul, parallel=plan)
    backbone = load_backbone(args.models, options, args.backbone, require_vocal_separator=not args.no_vocal_separation,
                             frame_size=args.size)
    settings = backbone.default_settings().with_overrides(backbone.name, motion=_given(
        frames=args.motion_frames, pixel_dropout=args.motion_dropout, drop_patch=args.motion_drop_patch,
        noise_std=args.motion_noise, protect_face=args.protect_face, carry_latents=args.carry_latents),
        **_given(steps=args.steps, cfg_scale=args.cfg, seed=args.seed, step_cache=args.step_cache,
                 step_cache_file=_step_cache_file(args, backbone), cfg_cache=args.cfg_cache,
                 guidance=_separate_guidance(args), pose_weight=args.pose_weight,
                 expression_weight=args.expression_weight, lip_weight=args.lip_weight, seed_policy=args.seed_policy))
    progress = _ProgressBar()
    try:
        result = generate(
            image=args.image, audio=args.audio, out=args.out, models=backbone, prompt=args.prompt, settings=settings,
            separate_vocals=not args.no_vocal_separation, render_dir=args.render_dir, keep_render=args.keep_render,
            progress=progress, speech_options={"long_audio_pieces": True} if args.audio_pieces else None,
        )
    finally:
        progress.close()  # before any error line, so the error is the last line
    if not plan.leader:  # the other processes of a parallel render: rank 0 prints
        return 0
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    resumed = f", {result.resumed_clips} resumed" if result.resumed_clips else ""
    print(f"{result.path}: {result.frames} frames at 25 fps, {result.clips} clips{resumed} ({result.backbone})")
    return 0


def _step_cache_file(args, backbone):
    """The step cache's calibration file, resolved here so the render key covers its contents."""
    if not args.step_cache:
        return None
    return args.step_cache_calibration or getattr(backbone, "calibration_path", lambda: None)()


def _given(**values) -> dict:
    """The options the user gave (argparse leaves the others None): the rest keep the backbone's official values."""
    return {name: value for name, value in values.items() if value is not None}


def _separate_guidance(args):
    if args.text_cfg is None and args.audio_cfg is None and args.ref_cfg is None:
        return None
    from .hallo3.denoiser import SeparateGuidance

    cfg = 3.5 if args.cfg is None else args.cfg
    return SeparateGuidance(text=cfg if args.text_cfg is None else args.text_cfg,
                            audio=cfg if args.audio_cfg is None else args.audio_cfg, reference=args.ref_cfg)


def _make_tiny_models(args) -> int:
    from .dev.tiny_models import make_tiny_comfyui_models, make_tiny_models

    make = make_tiny_comfyui_models if args.comfyui_layout else make_tiny_models
    written = make(args.dir, seed=args.seed, backbones=args.backbone.split(",") if args.backbone != "all"
                   else ["hallo3", "hallo", "hallo2"])
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


def _upscale(args) -> int:
    from .upscaler.video_file import upscale_video_file

    if (args.scale is None) == (args.long_side is None):
        args.scale = None if args.long_side else 4.0
    summary = upscale_video_file(
        args.input, args.out, upscaler_weights=args.upscaler, detector_model=args.detector,
        parsing_model=args.parsing, background_model=args.background, scale=args.scale,
        target_long_side=args.long_side, fidelity_weight=args.fidelity, face_upsample=args.face_upsample,
        device=args.device,
    )
    print(f"{summary['out']}: {summary['frames']} frames at {summary['fps']:g} fps "
          f"(faces in {summary['faces_detected']} frames)")
    return 0


GENERATE_EPILOG = """example:
  python -m hallo_core generate --image portrait.jpg --audio speech.wav --models pretrained_models \\
      --prompt "A woman talking on a beach at sunset" --out talking.mp4

Re-running the same command after an interruption resumes from the last finished clip.
Exit status: 0 done; 2 a problem with an input or option (one line saying what to fix); 130 interrupted."""


class _Parser(argparse.ArgumentParser):
    """argparse with the pack's one-line errors: `error: <what>; see <command> --help`, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m hallo_core", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    parity = commands.add_parser("parity", help="compare with numbers recorded from the official code")
    parity.add_argument("--weights", required=True, help="weights with official key names (.safetensors or .pt)")
    parity.add_argument("--io", required=True, help="golden inputs/intermediates/outputs (.safetensors)")
    parity.add_argument("--config", required=True, help="golden description (.json)")
    parity.add_argument("--device", default="cpu")
    parity.set_defaults(run=_parity)

    convert = commands.add_parser("convert", help="official checkpoints -> safetensors for ComfyUI")
    convert.add_argument("--src", required=True, help="pretrained_models/ (or a backbone's folder, or its checkpoint)")
    convert.add_argument("--dst", required=True, help="output folder, e.g. ComfyUI/models/diffusion_models/hallo3")
    convert.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32", "fp8_e4m3fn"],
                         help="storage dtype (default: the official one, bf16 for Hallo3, fp16 for Hallo/Hallo2)")
    convert.add_argument("--backbone", default=None, choices=["hallo3", "hallo", "hallo2"],
                         help="only this backbone's files (default: every backbone the folder holds)")
    convert.set_defaults(run=_convert)

    gen = commands.add_parser("generate", help="portrait + speech -> talking-portrait MP4 with the speech",
                              formatter_class=argparse.RawDescriptionHelpFormatter, epilog=GENERATE_EPILOG)
    gen.add_argument("--image", required=True, help="portrait (jpg/png/webp...; Hallo3: 3:2 or square; Hallo/"
                                                    "Hallo2: square, other shapes are cropped around the face)")
    gen.add_argument("--audio", required=True, help="speech (wav/mp3/flac/m4a/ogg, or a video's audio track)")
    gen.add_argument("--prompt", default="", help="scene description (Hallo3), e.g. 'A woman talking on a beach'")
    gen.add_argument("--models", required=True, help="an official pretrained_models/ folder")
    gen.add_argument("--backbone", default=None, choices=["hallo3", "hallo", "hallo2"],
                     help="which model to use when the models folder holds several (default: the one it holds)")
    gen.add_argument("--out", required=True, help="output .mp4")
    gen.add_argument("--steps", type=int, default=None, help="sampling steps (official: Hallo3 50, Hallo/Hallo2 40)")
    gen.add_argument("--seed", type=int, default=None, help="base seed (default 42)")
    gen.add_argument("--cfg", type=float, default=None, help="guidance scale (official: 3.5)")
    gen.add_argument("--no-vocal-separation", action="store_true",
                     help="drive the model with the audio as is instead of the separated vocals")
    gen.add_argument("--device", default=None, help="cuda or cpu (default: cuda when PyTorch sees a GPU)")
    gen.add_argument("--precision", "--dtype", dest="precision", default="auto",
                     choices=["auto", "bf16", "fp16", "fp32", "fp8_e4m3fn"],
                     help="auto: bf16 on a GPU (as the official code), fp32 on a CPU; fp8_e4m3fn stores the large "
                          "networks' matrices in 8 bits")
    gen.add_argument("--memory", "--residency", dest="memory", default="balanced",
                     choices=["full", "balanced", "low", "12gb"],
                     help="full: every model stays on the GPU; balanced: a model stays only while the next phase "
                          "fits beside it (same frames); low: also fp8 weights and blocks streamed from host memory; "
                          "12gb: low plus T5 and reference network streamed and a tiled VAE decode (12 GB cards)")
    gen.add_argument("--attention", default="auto",
                     choices=["auto", "flash", "cudnn", "efficient", "math", "flash3", "flash4", "sage"],
                     help="attention kernel: PyTorch SDPA (auto lets PyTorch choose; all exact), or an installed "
                          "FlashAttention 3/4 (exact) or SageAttention (int8, changes the result a little)")
    gen.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                     help="torch.compile each transformer block (default: on for CUDA GPUs with Triton, off on "
                          "CPUs); --no-compile keeps the eager path")
    gen.add_argument("--fp8-matmul", action="store_true",
                     help="row-wise fp8 matmuls in the transformer blocks (Hopper/Ada GPUs; changes the result)")
    hallo3 = gen.add_argument_group("Hallo3 only")
    hallo3.add_argument("--step-cache", type=float, default=None,
                        help="calibrated step cache threshold, e.g. 0.1 (faster, changes the result; 0 = off); needs "
                             "`python -m hallo_core calibrate` once per model")
    hallo3.add_argument("--step-cache-calibration", default=None,
                        help="the calibration file (default: beside the transformer's weights)")
    hallo3.add_argument("--cfg-cache", type=float, default=None,
                        help="share of the last steps that reuse the cached unconditional difference, e.g. 0.3 "
                             "(those steps cost half; changes the result; 0 = off)")
    hallo3.add_argument("--text-cfg", type=float, default=None,
                        help="separate text guidance scale (adds a third branch: 1.5x cost; default: official single "
                             "cfg)")
    hallo3.add_argument("--audio-cfg", type=float, default=None, help="separate audio guidance scale")
    hallo3.add_argument("--ref-cfg", type=float, default=None,
                        help="reference (identity) guidance scale: a fourth branch without the reference tokens (2x)")
    unet = gen.add_argument_group("Hallo and Hallo2 only")
    unet.add_argument("--pose-weight", type=float, default=None, help="how much the speech moves the head (1.0)")
    unet.add_argument("--expression-weight", type=float, default=None,
                      help="how much the speech drives the facial expression (1.0)")
    unet.add_argument("--lip-weight", type=float, default=None, help="how much the speech drives the lips (1.0)")
    unet.add_argument("--size", type=int, default=None,
                      help="square frame side in pixels, a multiple of 64 (official: 512)")
    unet.add_argument("--seed-policy", default=None, choices=["official", "per-clip"],
                      help="official: one generator for the whole video, as the official scripts (default); "
                           "per-clip: each clip its own")
    unet.add_argument("--audio-pieces", action="store_true",
                      help="Hallo2's 60 s audio pieces, each encoded on its own, as its official long-video script")
    gen.add_argument("--parallel", default=None, metavar="cfg|ulysses|cfg,ulysses",
                     help="one video on several GPUs, under torchrun --nproc-per-node N: cfg computes the guidance "
                          "branches side by side (N = branches: 2, or 3-4 with --text-cfg/--audio-cfg/--ref-cfg), "
                          "ulysses splits Hallo3's video tokens (N divides its 48 heads), both: branches x degree")
    gen.add_argument("--ulysses-degree", type=int, default=None,
                     help="processes per guidance branch with --parallel cfg,ulysses (default: N / branches)")
    gen.add_argument("--render-dir", default=None, help="where finished clips are kept (default: OUT.render/)")
    gen.add_argument("--keep-render", action="store_true", help="keep the render directory after success")
    motion = gen.add_argument_group("motion frames (defaults: each backbone's official values)")
    motion.add_argument("--motion-frames", type=int, default=None, help="frames each clip continues from (2)")
    motion.add_argument("--motion-dropout", type=float, default=None,
                        help="share of motion-frame pixels dropped (Hallo3 0.1, Hallo2 0.25, Hallo 0)")
    motion.add_argument("--motion-drop-patch", type=int, default=None, help="Hallo2 patch-drop size in pixels (1 = off)")
    motion.add_argument("--motion-noise", type=float, default=None, help="Hallo2 Gaussian noise on motion frames (0)")
    motion.add_argument("--protect-face", action=argparse.BooleanOptionalAction, default=None,
                        help="never drop motion pixels inside the face box (Hallo2: on)")
    motion.add_argument("--carry-latents", action="store_true", default=None,
                        help="Hallo3: continue clips from latents instead of re-encoded frames (experimental)")
    gen.set_defaults(run=_generate)

    up = commands.add_parser("upscale", help="Hallo2 temporal VQ face upscaling of a video (to 4K), with its audio")
    up.add_argument("--input", required=True, help="video to upscale (e.g. the output of generate)")
    up.add_argument("--out", required=True, help="output .mp4")
    up.add_argument("--upscaler", required=True, help="Hallo2 net_g.pth (pretrained_models/hallo2/) or .safetensors")
    up.add_argument("--detector", required=True,
                    help="scrfd_10g_bnkps.onnx (pretrained_models/face_analysis/models/)")
    up.add_argument("--parsing", default=None, help="parsing_parsenet.pth (soft face mask; default: feathered box)")
    up.add_argument("--background", default=None,
                    help="RealESRGAN_x2plus.pth (needs spandrel; default: Lanczos background)")
    up.add_argument("--scale", type=float, default=None, help="scale factor (default 4: 480x720 -> 1920x2880)")
    up.add_argument("--long-side", type=int, default=None, help="instead of --scale: long side in pixels (<= 4096)")
    up.add_argument("--fidelity", type=float, default=0.5, help="0: codebook only, 1: closest to the input")
    up.add_argument("--face-upsample", action="store_true",
                    help="also run --background's model on each restored face (official --face_upsample; slower)")
    up.add_argument("--device", default="cuda" if _cuda_available() else "cpu")
    up.set_defaults(run=_upscale)

    bench = commands.add_parser("bench", help="speed and memory with random weights (full size on a GPU)")
    bench.add_argument("--size", default="tiny", choices=["tiny", "full"])
    bench.add_argument("--backbone", default="hallo3", choices=["hallo3", "hallo2", "hallo"],
                       help="hallo2 / hallo: one clip of the UNet through each memory preset (--presets)")
    bench.add_argument("--device", default="cuda" if _cuda_available() else "cpu")
    bench.add_argument("--precision", "--dtype", dest="precision", default="auto",
                       choices=["auto", "bf16", "fp16", "fp32"], help="compute dtype (auto: bf16 on a GPU, fp32 on a CPU)")
    bench.add_argument("--steps", type=int, default=5, help="timed denoising steps")
    bench.add_argument("--layers", type=int, default=None, help="fewer layers than the size's (e.g. full width, 8)")
    bench.add_argument("--load-only", action="store_true", help="only the load time and host memory measurement")
    bench.add_argument("--presets", nargs="?", const="full,balanced,low,12gb", default=None,
                       help="instead: render one clip (--steps steps) under each memory preset (default all four, "
                            "or a comma-separated list; the first is the others' reference); peak GPU memory")
    bench.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                       help="default: the engine's own default (compiled on CUDA GPUs with Triton); --compile on a "
                            "CPU also measures the compiled step; --no-compile makes the eager path the default row")
    bench.add_argument("--options", default=None,
                       help="only these speed options, comma-separated: compile,fp8_matmul,fp8_storage,step_cache,"
                            "cfg_cache,steps,attention (default: all; compile on a CPU only when listed or with "
                            "--compile)")
    bench.add_argument("--out", default="bench.json", help="JSON record")
    bench.add_argument("--docs", default=None, help="append a row to this markdown file (docs/benchmarks.md)")
    bench.set_defaults(run=lambda args: __import__("hallo_core.dev.bench", fromlist=["main"]).main(args))

    __import__("hallo_core.hallo3.calibrate", fromlist=["add_parser"]).add_parser(commands)

    tiny = commands.add_parser("make-tiny-models", help="write tiny random models in the official layout")
    tiny.add_argument("dir", help="folder to write (the pretrained_models/ layout)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--backbone", default="hallo3",
                      help="hallo3 (default), hallo, hallo2, a comma-separated list, or all; the official layouts "
                           "of several backbones share one folder")
    tiny.add_argument("--comfyui-layout", action="store_true",
                      help="write into a ComfyUI models/ folder under the file names the shipped workflows use")
    tiny.set_defaults(run=_make_tiny_models)

    __import__("hallo_core.batch.command", fromlist=["add_batch_command"]).add_batch_command(commands)  # Ray: lazily
    return parser


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover - a broken torch install shows up at the first real use
        return False


def _prints_errors(error: BaseException) -> bool:
    """Under torchrun only rank 0 prints a user error: the others either met the same one (every check before the
    processes meet runs alike on all of them) or were told rank 0's (hallo_core/parallel/session.py)."""
    import os

    return os.environ.get("RANK", "0") == "0" and not getattr(error, "from_leader", False)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except HalloError as error:
        if _prints_errors(error):
            print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        if _prints_errors(interrupt):
            print("error: interrupted; finished clips are kept and a re-run resumes", file=sys.stderr)
        return 130
    except Exception as error:
        if getattr(error, "from_leader", False):  # rank 0 crashed and shows the traceback
            return 1
        raise
