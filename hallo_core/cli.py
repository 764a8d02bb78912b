"""Command line: `python -m hallo_core <command>` (ARCHITECTURE.md, "Command-line contract").

A user mistake prints one line starting with "error:" and exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import HalloError


def _parity(args) -> int:
    from .parity import run_parity

    result = run_parity(args.weights, args.io, args.config, device=args.device)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


def _convert(args) -> int:
    from .convert import convert_transformers

    for path in convert_transformers(args.src, args.dst, args.dtype):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hallo_core", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    parity = commands.add_parser("parity", help="compare with numbers recorded from the official code")
    parity.add_argument("--weights", required=True, help="weights with official key names (.safetensors or .pt)")
    parity.add_argument("--io", required=True, help="golden inputs/intermediates/outputs (.safetensors)")
    parity.add_argument("--config", required=True, help="golden description (.json)")
    parity.add_argument("--device", default="cpu")
    parity.set_defaults(run=_parity)

    convert = commands.add_parser("convert", help="official checkpoints -> safetensors for ComfyUI")
    convert.add_argument("--src", required=True, help="pretrained_models/ (or its hallo3/ folder, or the .pt)")
    convert.add_argument("--dst", required=True, help="output folder, e.g. ComfyUI/models/diffusion_models/hallo3")
    convert.add_argument("--dtype", default="bf16", help="bf16 (default), fp16, fp32 or fp8_e4m3fn")
    convert.set_defaults(run=_convert)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except HalloError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; finished clips are kept and a re-run resumes", file=sys.stderr)
        return 130
