"""Hallo and Hallo2 through the render engine on tiny models: `make-tiny-models --backbone hallo2` + `generate`, resume,
segments, the official seed policy, and the options that are refused."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import cut_audio, python_env, render_all

from hallo_core.audio import decode_audio, frame_count, speech_16k_mono
from hallo_core.backbones import load_backbone
from hallo_core.errors import InputError, ModelFileError, RenderCancelled
from hallo_core.media.video import probe
from hallo_core.render.progress import Reporter
from hallo_core.render.segments import Segment
from hallo_core.runtime.options import EngineOptions

SIZE = 64


@pytest.fixture(scope="module")
def tiny_unet(tmp_path_factory):
    from hallo_core.dev.tiny_models import make_tiny_models

    root = tmp_path_factory.mktemp("tiny_unet")
    make_tiny_models(root, seed=0, backbones=["hallo", "hallo2"])
    return root


@pytest.fixture(scope="module")
def speech_file(portraits_dir, tmp_path_factory):
    return cut_audio(portraits_dir / "0001.wav", 2.2, tmp_path_factory.mktemp("speech") / "speech.wav")  # 4 clips


@pytest.fixture(scope="module")
def hallo2(tiny_unet):
    return load_backbone(tiny_unet, EngineOptions.resolve("cpu"), "hallo2", frame_size=SIZE)


@pytest.fixture(scope="module")
def prepared(hallo2, portraits_dir, speech_file):
    return hallo2.prepare_identity(str(portraits_dir / "0001.jpg")), hallo2.prepare_speech(str(speech_file),
                                                                                           separate_vocals=False)


def test_generate_writes_the_whole_speech_with_its_sound(tiny_unet, portraits_dir, speech_file, tmp_path):
    out = tmp_path / "talking.mp4"
    args = ["--image", portraits_dir / "0001.jpg", "--audio", speech_file, "--models", tiny_unet, "--backbone",
            "hallo2", "--size", SIZE, "--steps", 2, "--device", "cpu", "--out", out]
    result = subprocess.run([sys.executable, "-m", "hallo_core", "generate", *map(str, args)], capture_output=True,
                            text=True, env=python_env(), timeout=600)
    assert result.returncode == 0, result.stderr
    info = probe(out)
    video = next(s for s in info["streams"] if s["type"] == "video")
    assert [s["codec"] for s in info["streams"]] == ["h264", "aac"] and video["fps"] == 25.0
    assert (video["width"], video["height"]) == (SIZE, SIZE)
    assert info["frames"] == frame_count(len(speech_16k_mono(decode_audio(str(speech_file))))) == 56
    assert "(hallo2)" in result.stdout and not (tmp_path / "talking.render").exists()


def test_mixed_models_folder_asks_which_backbone(tiny_unet, portraits_dir, speech_file, tmp_path):
    result = subprocess.run([sys.executable, "-m", "hallo_core", "generate", "--image", portraits_dir / "0001.jpg",
                             "--audio", speech_file, "--models", tiny_unet, "--out", tmp_path / "x.mp4"],
                            capture_output=True, text=True, env=python_env(), timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: {tiny_unet} holds the weights of hallo and hallo2; pick one with "
                                     "--backbone hallo|hallo2")


def test_interrupted_render_resumes_to_the_same_clips(hallo2, prepared, tmp_path):
    identity, speech = prepared
    settings = hallo2.default_settings().with_overrides("hallo2", steps=2, seed=3)
    whole = Segment(hallo2, identity, speech, "", settings)
    with whole.open_store(tmp_path / "whole") as store:
        whole.render(store)
        reference = [store.clip_frames(c) for c in whole.clips]

    steps = []
    reporter = Reporter(lambda e: steps.append(e) if e.phase == "denoise" else None, cancel=lambda: len(steps) >= 5)
    with whole.open_store(tmp_path / "resumed") as store:
        with pytest.raises(RenderCancelled):
            whole.render(store, reporter)
        assert store.finished_clips() == [0, 1]
    with whole.open_store(tmp_path / "resumed") as store:
        result = whole.render(store)
        assert result.resumed == 2
        assert all(np.array_equal(store.clip_frames(c), frames) for c, frames in zip(whole.clips, reference))


def test_segments_equal_one_render_with_the_official_generator(hallo2, prepared):
    identity, speech = prepared
    settings = hallo2.default_settings().with_overrides("hallo2", steps=2, seed=42)
    assert settings.seed_policy == "official" and settings.motion.pixel_dropout == 0.25
    whole = render_all(hallo2, identity, speech, "", settings)
    assert len(whole) == 4 and sum(len(c.frames) for c in whole) == 56
    first = render_all(hallo2, identity, speech, "", settings, clips=range(0, 2))
    second = render_all(hallo2, identity, speech, "", settings, clips=range(2, 4), previous=first[-1].continuation)
    for a, b in zip(whole, first + second):
        assert torch.equal(a.frames, b.frames)
    # Frames from elsewhere carry no generator state: the draws of the clips before are replayed.
    from hallo_core.render.backbone import Continuation

    approximate = Continuation(first[-1].continuation.frames, None)
    replayed = render_all(hallo2, identity, speech, "", settings, clips=range(2, 3), previous=approximate)
    assert torch.equal(replayed[0].frames, whole[2].frames)
    # Clip 0 draws as the official script: one generator seeded once, rand(H, W) for the drop, then the noise.
    per_clip = hallo2.default_settings().with_overrides("hallo2", steps=2, seed=42, seed_policy="per-clip")
    assert not torch.equal(render_all(hallo2, identity, speech, "", per_clip, clips=range(0, 1))[0].frames,
                           whole[0].frames)


def test_pose_expression_and_lip_weights_change_the_video(hallo2, prepared):
    identity, speech = prepared
    official = hallo2.default_settings().with_overrides("hallo2", steps=2)
    calm = official.with_overrides("hallo2", pose_weight=0.0, lip_weight=2.0)
    a = render_all(hallo2, identity, speech, "", official, clips=range(0, 1))[0].frames
    b = render_all(hallo2, identity, speech, "", calm, clips=range(0, 1))[0].frames
    assert (a - b).abs().max() > 1e-3


def test_hallo_v1_drops_no_motion_pixels_and_hallo2_does(tiny_unet):
    hallo = load_backbone(tiny_unet, EngineOptions.resolve("cpu"), "hallo", frame_size=SIZE)
    assert hallo.default_settings().motion.pixel_dropout == 0.0 and hallo.name == "hallo"


@pytest.mark.parametrize("values, message", [
    (dict(pose_weight=float("nan")), "pose weight must be a finite number"),
    (dict(lip_weight=-1.0), "lip weight must be a finite number in \\[0, 10\\]"),
    (dict(seed_policy="random"), "seed policy must be one of official, per-clip"),
    (dict(step_cache=0.1), "--step-cache is not an option of hallo2"),
])
def test_bad_settings_are_refused(hallo2, values, message):
    with pytest.raises(InputError, match=message):
        hallo2.default_settings().with_overrides("hallo2", **values)


def test_motion_options_the_network_cannot_take_are_refused(hallo2):
    with pytest.raises(InputError, match="exactly 2 motion frames"):
        hallo2.default_settings().with_overrides("hallo2", motion={"frames": 3})
    with pytest.raises(InputError, match="carry_latents is a Hallo3 option"):
        hallo2.default_settings().with_overrides("hallo2", motion={"carry_latents": True})


def test_frame_size_must_be_a_multiple_of_64(tiny_unet, tiny_models):
    with pytest.raises(InputError, match="multiple of 64"):
        load_backbone(tiny_unet, EngineOptions.resolve("cpu"), "hallo2", frame_size=100)
    with pytest.raises(ModelFileError, match="--size is a Hallo and Hallo2 option"):
        load_backbone(tiny_models, EngineOptions.resolve("cpu"), "hallo3", frame_size=64)
