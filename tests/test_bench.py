"""The benchmark commands still measure what docs/benchmarks.md reports (tiny sizes, CPU, a few steps)."""

import torch

from hallo_core.dev.bench import benchmark_row, run_benchmark
from hallo_core.dev.preset_bench import preset_rows, run_preset_benchmark


def test_preset_benchmark_renders_each_preset_and_compares_it_with_the_first():
    record = run_preset_benchmark("tiny", "cpu", steps=2)
    full, balanced, low, small = (record["presets"][name] for name in ("full", "balanced", "low", "12gb"))
    assert full["finite"] and full["compared_with"] is None
    assert balanced["identical"] and balanced["max_abs"] == 0.0  # same weights, same maths
    assert not low["identical"] and 0 < low["max_abs"] < 0.5  # fp8 weights
    assert not small["vs_low"]["identical"] and small["vs_low"]["mean_abs"] < 0.06  # low's latents, tiled decode
    assert {"text_encoder", "vae", "reference_net", "transformer"} <= set(balanced["phases"])
    assert balanced["phases"]["transformer"]["uses"] == 2  # reference keys/values once, then the clip
    rows = preset_rows(record, "bench --presets")
    assert len(rows) == 4 and "vs low:" in rows[3]


def test_transformer_benchmark_times_steps_options_and_where_the_time_goes():
    record = run_benchmark("tiny", "cpu", torch.float32, steps=2, quality_steps=4,
                           options_wanted={"steps", "step_cache", "cfg_cache", "fp8_matmul"})
    assert record["step_s"] > 0 and record["clip_s"] > 50 * record["step_s"] and not record["default_compiled"]
    for profile in (record["step_profile"], record["decode_profile"]):
        assert profile["total_ms"] > 0 and profile["matmul_ms"] > 0
    assert record["step_profile"]["attention_ms"] > 0 and record["decode_profile"]["attention_ms"] == 0
    assert record["tiled_decode"]["max_abs"] > 0  # the 12gb preset's decode, against the official one
    options = record["options"]
    assert set(options) == {"steps_2_vs_4", "step_cache_0.1", "step_cache_0.2", "step_cache_0.3", "cfg_cache_0.3",
                            "cfg_cache_0.5", "fp8_matmul"}
    assert options["steps_2_vs_4"]["speed_ratio"] == 2.0 and options["steps_2_vs_4"]["max_abs"] > 0
    assert all(0 <= options[f"step_cache_{t}"]["skipped"] <= 2 for t in (0.1, 0.2, 0.3))  # first, last compute
    assert options["fp8_matmul"]["weights_ratio"] < 0.8 and options["fp8_matmul"]["max_abs"] > 0
    row = benchmark_row(record, "bench")
    assert "| tiny float32, eager |" in row and "step: attention" in row and "steps skipped" in row
    assert "tiled decode (12gb)" in row


def test_unknown_presets_or_options_are_refused_in_one_line(capsys):
    from hallo_core.cli import main

    assert main(["bench", "--presets", "full,fast", "--out", "unused.json"]) == 2
    assert "error: --presets: unknown fast; choose from balanced,full,low,12gb" in capsys.readouterr().err
    assert main(["bench", "--options", "fp8", "--out", "unused.json"]) == 2
    assert "error: --options: unknown fp8; choose from compile,fp8_matmul" in capsys.readouterr().err


def test_unet_bench_renders_a_clip_under_each_preset():
    """`bench --backbone hallo2`: one clip through the real backbone per preset; balanced equals full."""
    from hallo_core.dev.unet_bench import run_unet_benchmark, unet_rows

    record = run_unet_benchmark("tiny", "cpu", steps=2, presets=("full", "balanced"))
    full, balanced = record["presets"]["full"], record["presets"]["balanced"]
    assert full["finite"] and balanced["identical"] and balanced["compared_with"] == "full"
    assert full["per_output_second_s"] > 0 and record["frame_size"] == 64
    rows = unet_rows(record, "python -m hallo_core bench --backbone hallo2")
    assert len(rows) == 2 and "| balanced |" in rows[1] and "identical" in rows[1]
