"""The engine against the official implementation's own numbers (tiny golden, fp32)."""

import json
import subprocess
import sys

from conftest import python_env

EXPECTED = {
    "intermediates.ref_bank.0", "intermediates.ref_bank.1", "intermediates.ref_out",
    "intermediates.audio_tokens_batched", "intermediates.face_tokens_batched", "intermediates.v_pred_batched",
    "outputs.denoised_guided", "sampler_run.x_final",
}


def test_parity_command_matches_golden(golden_dir):
    result = subprocess.run(
        [sys.executable, "-m", "hallo_core", "parity", "--weights", str(golden_dir / "hallo3_tiny.weights.safetensors"),
         "--io", str(golden_dir / "hallo3_tiny.io.safetensors"), "--config", str(golden_dir / "hallo3_tiny.json")],
        capture_output=True, text=True, env=python_env(), timeout=600,
    )
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0, result.stderr
    assert len(lines) == 1, "parity prints exactly one JSON line"
    report = json.loads(lines[0])
    diffs = report["max_abs_diff"]
    assert set(diffs) == EXPECTED
    assert report["ok"] is True
    assert all(value <= 1e-4 for value in diffs.values()), diffs
    # Deterministic pieces are far tighter than the tolerance: a wrong eps, RoPE slice or chunk order is not.
    assert diffs["intermediates.v_pred_batched"] < 2e-5
    assert diffs["outputs.denoised_guided"] < 3e-5
    assert max(diffs[f"intermediates.ref_bank.{i}"] for i in (0, 1)) < 1e-5


def test_parity_command_reports_bad_input_in_one_line(golden_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "hallo_core", "parity", "--weights", str(golden_dir / "hallo3_tiny.weights.safetensors"),
         "--io", str(tmp_path / "missing.safetensors"), "--config", str(golden_dir / "hallo3_tiny.json")],
        capture_output=True, text=True, env=python_env(), timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "missing.safetensors" in result.stderr and "Traceback" not in result.stderr
