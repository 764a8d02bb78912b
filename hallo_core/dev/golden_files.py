"""Reading a golden triple's description (JSON) and tensors (safetensors) for the `parity` command."""

from __future__ import annotations

import json
import os

import torch
from safetensors import safe_open

from ..errors import InputError, ModelFileError


def read_golden_description(path: str) -> dict:
    if not os.path.isfile(path):
        raise InputError(f"golden description not found: {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON ({exc})") from None


def read_golden_tensors(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise InputError(f"golden io file not found: {path}")
    try:
        with safe_open(path, framework="pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise ModelFileError(f"{path}: not a readable safetensors file ({exc})") from None
