"""Speed options that change the result: each off by default, refused in one line where it cannot run (tiny models,
CPU)."""

import json

import pytest
import torch
from conftest import cut_audio, random_hallo3_clip, render_all, tiny_backbone

from hallo_core.errors import InputError
from hallo_core.hallo3.backbone import Hallo3Settings
from hallo_core.hallo3.checkpoint import load_transformer
from hallo_core.hallo3.denoiser import GuidedDenoiser, LateCfgCache
from hallo_core.hallo3.sampler import sat_schedule
from hallo_core.hallo3.step_cache import StepCacheCalibration, fit_calibration
from hallo_core.memory.weight_casting import RowwiseFp8Linear, enable_fp8_matmul
from hallo_core.runtime.attention import check_installed_kernel
from hallo_core.runtime.options import EngineOptions


@pytest.fixture(scope="module")
def one_clip_speech(portraits_dir, tmp_path_factory):
    return cut_audio(portraits_dir / "0003.wav", 1.5, tmp_path_factory.mktemp("audio") / "speech.wav")


def test_rowwise_fp8_matmul_halves_the_matrices_and_keeps_norms_in_the_compute_dtype(tiny_models):
    model = load_transformer(tiny_models, dtype=torch.bfloat16)
    block = model.transformer_blocks[0]
    x = torch.randn(2, 40, model.config.hidden_size, dtype=torch.bfloat16)
    exact = block.ff(x).float()
    assert enable_fp8_matmul(model) > 0
    names = {name for name, module in model.named_modules() if isinstance(module, RowwiseFp8Linear)}
    assert "transformer_blocks.0.ff.net.2" in names and "transformer_blocks.0.attn1.to_q" in names
    assert not any("norm" in name for name in names)  # adaLN and qk-norms stay bf16
    assert block.norm1.linear.weight.dtype == torch.bfloat16
    layer = block.ff.net[2]
    assert layer.weight.dtype == torch.float8_e4m3fn and layer.weight_scale.shape == (1, layer.out_features)
    fast = block.ff(x).float()
    relative = (fast - exact).abs().max() / exact.abs().max()
    assert 0 < relative < 0.1  # activations and weights rounded to fp8, one scale per row


def test_calibration_round_trips_and_names_the_calibrate_command(tmp_path):
    pairs = [(1.2, 0.3), (0.9, 0.2), (0.6, 0.12), (0.4, 0.08), (0.3, 0.05)]
    calibration = fit_calibration(pairs, 6, {"hidden_size": 64}, 1234)
    path = calibration.save(tmp_path / "model.step_cache.json")
    loaded = StepCacheCalibration.load(path)
    assert loaded == calibration
    assert float(loaded.predict(torch.tensor(0.9))) == pytest.approx(0.2, abs=0.02)  # the fit follows its points
    loaded.check_model({"hidden_size": 64}, 1234, path)
    with pytest.raises(InputError, match="calibrated on another model.*python -m hallo_core calibrate"):
        loaded.check_model({"hidden_size": 64}, 999, path)
    (tmp_path / "bad.json").write_text(json.dumps({"format": "something else"}))
    for bad in (tmp_path / "bad.json", tmp_path / "missing.json", None):
        with pytest.raises(InputError, match="python -m hallo_core calibrate") as error:
            StepCacheCalibration.load(bad)
        assert "\n" not in str(error.value)


def test_step_cache_refuses_to_run_uncalibrated(tiny_models):
    backbone = tiny_backbone(tiny_models)
    with pytest.raises(InputError, match="needs a calibration.*python -m hallo_core calibrate"):
        backbone.prepare_video(None, None, "", Hallo3Settings(steps=4, step_cache=0.2))  # before anything loads
    assert not backbone.models.loaded("transformer")


def test_calibrated_step_cache_skips_steps_and_stays_close(tiny_models, portraits_dir, one_clip_speech, tmp_path):
    from hallo_core.hallo3.calibrate import calibrate, predicted_skips

    image = str(portraits_dir / "0003.jpg")
    path, calibration = calibrate(tiny_models, image, str(one_clip_speech), out=tmp_path / "cal.json", steps=10,
                                  options=EngineOptions.resolve("cpu"), separate_vocals=False)
    assert StepCacheCalibration.load(path) == calibration and len(calibration.pairs) == 9
    assert predicted_skips(calibration, 0.3) > 0

    backbone = tiny_backbone(tiny_models)
    identity = backbone.prepare_identity(image)
    speech = backbone.prepare_speech(str(one_clip_speech), separate_vocals=False)
    exact = render_all(backbone, identity, speech, "", Hallo3Settings(steps=10))[0].frames
    cached = render_all(backbone, identity, speech, "", Hallo3Settings(steps=10, step_cache=0.3,
                                                                       step_cache_file=str(path)))[0].frames
    difference = (cached - exact).abs()
    assert 0 < difference.max() < 0.5 and difference.mean() < 0.05


def test_late_cfg_cache_runs_one_row_on_late_steps_and_stays_close(tiny_models):
    model = load_transformer(tiny_models, dtype=torch.float32)
    conditioning, x = random_hallo3_clip(model, 0)
    rows = []
    model.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    schedule = sat_schedule(10)
    official = GuidedDenoiser(model, conditioning, schedule)
    cached = GuidedDenoiser(model, conditioning, schedule, late_cfg=LateCfgCache(0.3))
    exact = [official(x, step) for step in range(10)]
    rows.clear()
    fast = [cached(x, step) for step in range(10)]
    assert rows == [2] * 7 + [1] * 3  # the last 30 % of the steps: the conditional row only
    assert all(torch.equal(a, b) for a, b in zip(exact[:7], fast[:7]))
    late = max(float((a - b).abs().max()) for a, b in zip(exact[7:], fast[7:]))
    assert 0 < late < 0.5 * max(float(a.abs().max()) for a in exact[7:])
    # With the step cache too: the one-row steps start a sequence of their own (no stale two-row residual).
    from hallo_core.hallo3.step_cache import CalibratedStepCache

    always = fit_calibration([(1.0, 0.0), (0.5, 0.0), (0.2, 0.0)], 10, {}, 0)  # predicts no change: skip when allowed
    cache = CalibratedStepCache(0.5, always, 10)
    combined = GuidedDenoiser(model, conditioning, schedule, late_cfg=LateCfgCache(0.3))
    with cache.attached(model):
        both = [combined(x, step) for step in range(10)]
    assert all(torch.isfinite(value).all() and value.shape == exact[0].shape for value in both)
    assert cache.computed == 3 and cache.skipped == 7  # step 0, the first one-row step and the last step compute
    with pytest.raises(InputError, match="official single guidance"):
        from hallo_core.hallo3.denoiser import SeparateGuidance

        Hallo3Settings(cfg_cache=0.3, guidance=SeparateGuidance(3.5, 5.0))


def test_installed_attention_kernels_are_refused_in_one_line_naming_the_package(capsys):
    with pytest.raises(InputError, match="CUDA GPUs only"):
        EngineOptions.resolve("cpu", attention="sage")
    for name, package in (("sage", "sageattention"), ("flash3", "flash_attn_interface"), ("flash4", "flash-attn-4")):
        with pytest.raises(InputError, match=f"needs the package {package}") as error:
            check_installed_kernel(name, torch.device("cuda"))  # none of them is installed on the CPU machines
        assert "\n" not in str(error.value)
    from hallo_core.cli import main

    code = main(["generate", "--image", "i.jpg", "--audio", "a.wav", "--models", "m", "--out", "o.mp4",
                 "--device", "cpu", "--attention", "flash3"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: attention 'flash3' runs on CUDA GPUs only") and err.count("\n") == 1
