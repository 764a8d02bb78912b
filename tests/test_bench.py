"""The benchmark commands still measure what docs/benchmarks.md reports (tiny sizes, CPU, a few steps)."""

import torch

from hallo_core.dev.bench import benchmark_row, run_benchmark
from hallo_core.dev.preset_bench import preset_rows, run_preset_benchmark


def test_preset_benchmark_renders_each_preset_and_compares_it_with_the_first():
    record = run_preset_benchmark("tiny", "cpu", steps=2)
    full, balanced, low = (record["presets"][name] for name in ("full", "balanced", "low"))
    assert full["finite"] and full["compared_with"] is None
    assert balanced["identical"] and balanced["max_abs"] == 0.0  # same weights, same maths
    assert not low["identical"] and 0 < low["max_abs"] < 0.5  # fp8 weights
    assert {"text_encoder", "vae", "reference_net", "transformer"} <= set(balanced["phases"])
    assert balanced["phases"]["transformer"]["uses"] == 2  # reference keys/values once, then the clip
    assert len(preset_rows(record, "bench --presets")) == 3


def test_transformer_benchmark_times_steps_and_the_selected_options():
    record = run_benchmark("tiny", "cpu", torch.float32, steps=2, quality_steps=4, options_wanted={"steps"})
    assert record["step_s"] > 0 and record["clip_s"] > 50 * record["step_s"]
    assert list(record["options"]) == ["steps_2_vs_4"]
    assert record["options"]["steps_2_vs_4"]["speed_ratio"] == 2.0
    assert record["options"]["steps_2_vs_4"]["max_abs"] > 0  # half the steps is a different result
    assert "| tiny float32 |" in benchmark_row(record, "bench")


def test_unknown_presets_or_options_are_refused_in_one_line(capsys):
    from hallo_core.cli import main

    assert main(["bench", "--presets", "full,fast", "--out", "unused.json"]) == 2
    assert "error: --presets: unknown fast; choose from full,balanced,low" in capsys.readouterr().err
    assert main(["bench", "--options", "fp8", "--out", "unused.json"]) == 2
    assert "error: --options: unknown fp8; choose from step_cache,steps" in capsys.readouterr().err
