"""Fast by default, same numbers: compile is the default where it pays (CUDA) and equals the eager path; the compiled
blocks never recompile between steps, clips or segments (tiny models, CPU)."""

import importlib.util

import pytest
import torch

from conftest import random_hallo3_clip
from hallo_core.hallo3.checkpoint import load_transformer
from hallo_core.hallo3.denoiser import GuidedDenoiser, LateCfgCache
from hallo_core.hallo3.sampler import sat_schedule
from hallo_core.runtime.options import EngineOptions, compile_supported


def test_compile_is_the_default_on_cuda_with_triton_only(monkeypatch):
    assert EngineOptions.resolve("cpu").compile is False  # CPUs stay eager (and the fp32 parity path with them)
    assert EngineOptions.resolve("cpu", compile=True).compile is True
    assert compile_supported(torch.device("cpu")) is False
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "triton" else None)
    assert compile_supported(torch.device("cuda")) is True
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert compile_supported(torch.device("cuda")) is False  # no Triton: eager, not a failure


def test_generate_has_compile_and_no_compile():
    from hallo_core.cli import build_parser

    base = ["generate", "--image", "i.jpg", "--audio", "a.wav", "--models", "m", "--out", "o.mp4"]
    parser = build_parser()
    assert parser.parse_args(base).compile is None  # the device's default
    assert parser.parse_args(base + ["--no-compile"]).compile is False
    assert parser.parse_args(base + ["--compile"]).compile is True
    assert parser.parse_args(base + ["--memory", "12gb"]).memory == "12gb"
    calibrate = parser.parse_args(["calibrate", "--models", "m", "--image", "i.jpg", "--audio", "a.wav"])
    assert calibrate.steps == 50 and calibrate.out is None and callable(calibrate.run)


def test_compiled_blocks_equal_eager_and_never_recompile(tiny_models):
    """The first step compiles (one graph for all blocks, static shapes); later steps, a second clip and the
    late-step CFG cache's one-row call after its own first compile run without recompiling. `aot_eager` traces as
    inductor does without generating code (inductor's rounding is measured by `bench`)."""
    eager = load_transformer(tiny_models, dtype=torch.float32)
    compiled = load_transformer(tiny_models, dtype=torch.float32)
    torch._dynamo.reset()
    compiled.compile_blocks(backend="aot_eager")
    schedule = sat_schedule(10)
    clips = [random_hallo3_clip(eager, 1), random_hallo3_clip(eager, 2)]
    first = GuidedDenoiser(compiled, clips[0][0], schedule, late_cfg=LateCfgCache(0.2))
    first(clips[0][1], 0)
    first(clips[0][1], 9)  # the 1-row call: its own graph, once
    with torch.compiler.set_stance("fail_on_recompile"):
        for conditioning, x in clips:
            reference = GuidedDenoiser(eager, conditioning, schedule, late_cfg=LateCfgCache(0.2))
            fast = GuidedDenoiser(compiled, conditioning, schedule, late_cfg=LateCfgCache(0.2))
            for step in (0, 3, 8, 9):
                assert torch.allclose(fast(x, step), reference(x, step), atol=1e-5, rtol=1e-5)
    # The stance is real: a 3-row batch would have to compile a new graph.
    with pytest.raises(RuntimeError, match="recompil"), torch.compiler.set_stance("fail_on_recompile"):
        fast.velocity(clips[1][1], 500, (0, 1, 1), (0, 0, 1))
