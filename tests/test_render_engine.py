"""The engine without models: the clip loop, the render store and segments over a small deterministic backbone.

`CountingBackbone` makes each clip's frames from its seed, index and the previous clip's continuation, so a wrong
continuation or a wrong resume shows up as different frames.
"""

import json
import os

import numpy as np
import pytest
import torch

from hallo_core.errors import InputError, OutputError
from hallo_core.render.backbone import Backbone, ClipResult, Continuation
from hallo_core.render.clip_plan import ClipPlan
from hallo_core.render.engine import render_clips
from hallo_core.render.motion import MotionOptions
from hallo_core.render.progress import Reporter
from hallo_core.render.segments import Segment
from hallo_core.render.settings import RenderSettings
from hallo_core.render.store import FORMAT, RenderStore

SIZE = (8, 12)


class _Conditioning:
    def __init__(self, total_frames=40):
        self.total_frames = total_frames
        self.notes = []
        self.output_crop = None
        self.audio = type("A", (), {"samples": torch.zeros(1, 16000 * total_frames // 25), "sample_rate": 16000})()

    def digest(self):
        return f"cond{self.total_frames}"


class CountingBackbone:
    name = family = "counting"
    frame_size = SIZE
    phases = ()

    def __init__(self):
        self.rendered = []

    def plan(self, total_frames, settings):
        return ClipPlan(total_frames, 10)

    def default_settings(self):
        return RenderSettings(steps=3)

    def prepare_identity(self, image, allow_no_face=False):
        return _Conditioning()

    def prepare_speech(self, audio, separate_vocals=True):
        return _Conditioning()

    def prepare_video(self, identity, speech, prompt, settings):
        return speech

    def latent_previewer(self, identity):
        return None

    def model_identity(self):
        return {"backbone": self.name}

    def render_clip(self, video, index, previous, settings, on_step):
        self.rendered.append(index)
        base = 0.0 if previous is None else float(previous.frames.mean())
        for step in range(settings.steps):
            on_step(step + 1, settings.steps, None)
        kept = self.plan(video.total_frames, settings).clip_output_frames(index)
        value = (base * 0.5 + (settings.seed % 7) * 0.01 + index * 0.07) % 1.0
        frames = torch.full((len(kept), 3, *SIZE), value)
        return ClipResult(index, frames, Continuation(frames[-2:].clone() + 0.003, kept.stop))


def test_counting_backbone_follows_the_protocol():
    assert isinstance(CountingBackbone(), Backbone)


def _render(backbone, store=None, clips=None, previous=None, settings=RenderSettings(steps=3), reporter=None):
    speech = _Conditioning()
    plan = backbone.plan(speech.total_frames, settings)
    return list(render_clips(backbone, speech, plan, settings, clips, previous, store, reporter))


def test_resume_reuses_intact_clips_and_redoes_a_damaged_one_exactly(tmp_path):
    reference = [c.frames for c in _render(CountingBackbone())]
    backbone = CountingBackbone()
    with RenderStore(tmp_path / "r", "key") as store:
        _render(backbone, store)
    assert backbone.rendered == [0, 1, 2, 3]
    with open(tmp_path / "r" / "clip_00001.mkv", "r+b") as f:  # damage a middle clip
        f.seek(100)
        f.write(b"\x00" * 64)
    backbone = CountingBackbone()
    with RenderStore(tmp_path / "r", "key") as store:
        clips = _render(backbone, store)
        assert any("clip 1" in note and "damaged" in note for note in store.notes)
    assert backbone.rendered == [1]  # only the damaged clip, continued from clip 0's saved state
    assert [c.resumed for c in clips] == [True, False, True, True]
    for ours, expected in zip(clips, reference):
        assert torch.equal((ours.frames * 255).to(torch.uint8), (expected * 255).to(torch.uint8))


def test_missing_state_file_is_detected(tmp_path):
    with RenderStore(tmp_path / "r", "key") as store:
        _render(CountingBackbone(), store)
    os.remove(tmp_path / "r" / "state_00003.safetensors")
    backbone = CountingBackbone()
    with RenderStore(tmp_path / "r", "key") as store:
        _render(backbone, store)
        assert any("state_00003.safetensors is missing" in note for note in store.notes)
    assert backbone.rendered == [3]


def test_another_key_or_an_older_format_clears_only_our_files(tmp_path):
    directory = tmp_path / "r"
    with RenderStore(directory, "key") as store:
        _render(CountingBackbone(), store)
    (directory / "notes.txt").write_text("the user's own file")
    with RenderStore(directory, "other key") as store:
        assert not store.resumed and store.finished_clips() == []
    assert (directory / "notes.txt").exists() and not (directory / "clip_00000.mkv").exists()
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["format"] = FORMAT - 1  # a render directory from an older version of the pack
    (directory / "manifest.json").write_text(json.dumps(manifest))
    (directory / "motion_00003.safetensors").write_bytes(b"old layout")
    with RenderStore(directory, "other key") as store:
        assert any("another version" in note for note in store.notes)
    assert not (directory / "motion_00003.safetensors").exists()


def test_clips_without_a_manifest_or_a_damaged_manifest_are_not_trusted(tmp_path):
    directory = tmp_path / "r"
    with RenderStore(directory, "key") as store:
        _render(CountingBackbone(), store)
    (directory / "manifest.json").write_text("{not json")
    backbone = CountingBackbone()
    with RenderStore(directory, "key") as store:
        assert any("damaged" in note for note in store.notes)
        _render(backbone, store)
    assert backbone.rendered == [0, 1, 2, 3]
    os.remove(directory / "manifest.json")
    with RenderStore(directory, "key") as store:
        assert any("without a manifest" in note for note in store.notes) and store.finished_clips() == []


def test_a_second_store_on_the_same_directory_is_refused(tmp_path):
    with RenderStore(tmp_path / "r", "key"):
        with pytest.raises(OutputError, match="another render is writing into"):
            RenderStore(tmp_path / "r", "key")
    with RenderStore(tmp_path / "r", "key"):  # released when the first one closed
        pass


def test_unwritable_render_directory_is_refused(tmp_path):
    with pytest.raises(OutputError, match="render folder|cannot write"):
        RenderStore("/sys/hallo_render_test", "key")


def test_a_failing_clip_write_keeps_the_finished_clips(tmp_path, monkeypatch):
    import errno

    import hallo_core.render.store as store_module

    backbone = CountingBackbone()
    calls = []
    real = store_module.write_clip_frames

    def full_disk_on_third(path, frames):
        calls.append(path)
        if len(calls) == 3:
            raise store_module.write_failure(path, OSError(errno.ENOSPC, "No space left on device"))
        return real(path, frames)

    monkeypatch.setattr(store_module, "write_clip_frames", full_disk_on_third)
    with RenderStore(tmp_path / "r", "key") as store:
        with pytest.raises(OutputError, match="No space left on device; free some disk space"):
            _render(backbone, store)
        assert store.finished_clips() == [0, 1]
    monkeypatch.setattr(store_module, "write_clip_frames", real)
    backbone = CountingBackbone()
    with RenderStore(tmp_path / "r", "key") as store:
        _render(backbone, store)
    assert backbone.rendered == [2, 3]
    assert not [name for name in os.listdir(tmp_path / "r") if "partial" in name]


def test_segments_equal_one_render_and_check_where_the_previous_one_ended(tmp_path):
    backbone = CountingBackbone()
    identity = speech = _Conditioning()
    settings = RenderSettings(steps=2, seed=5)
    whole = Segment(backbone, identity, speech, "", settings)
    with whole.open_store(tmp_path / "whole") as store:
        one = whole.render(store)
        frames_whole = [store.clip_frames(c) for c in whole.clips]
    first = Segment.from_seconds(backbone, identity, speech, "", settings, 0.0, 0.8)
    assert first.clips == range(0, 2)
    with first.open_store(tmp_path / "a") as store:
        a = first.render(store)
        frames_a = [store.clip_frames(c) for c in first.clips]
    second = Segment.from_seconds(backbone, identity, speech, "", settings, 0.8, None, previous=a.continuation)
    with second.open_store(tmp_path / "b") as store:
        second.render(store)
        frames_b = [store.clip_frames(c) for c in second.clips]
    assert all(np.array_equal(x, y) for x, y in zip(frames_whole, frames_a + frames_b))
    assert one.continuation.end_frame == 40 and a.continuation.source["backbone"] == "counting"
    with pytest.raises(InputError, match="ends at 0.80 s but this one starts at 1.20 s"):
        Segment.from_seconds(backbone, identity, speech, "", settings, 1.2, None, previous=a.continuation)
    with pytest.raises(InputError, match="connect the previous segment"):
        Segment.from_seconds(backbone, identity, speech, "", settings, 0.8, None)
    other = Segment.from_seconds(backbone, identity, speech, "", RenderSettings(steps=2, seed=6), 0.8, None,
                                 previous=a.continuation)
    assert any("other seed" in note for note in other.notes)
    with pytest.raises(InputError, match="past the end"):
        Segment.from_seconds(backbone, identity, speech, "", settings, 2.0, None)


def test_cancel_stops_within_a_step_and_keeps_finished_clips(tmp_path):
    from hallo_core.errors import RenderCancelled

    steps = []

    def cancel():
        return len(steps) >= 5

    reporter = Reporter(lambda event: steps.append(event) if event.phase == "denoise" else None, cancel)
    with RenderStore(tmp_path / "r", "key") as store:
        with pytest.raises(RenderCancelled):
            _render(CountingBackbone(), store, reporter=reporter)
        assert store.finished_clips() == [0]
    assert len(steps) == 5


@pytest.mark.parametrize("values, message", [
    (dict(steps=0), "steps must be between 1 and 1000"),
    (dict(cfg_scale=float("nan")), "cfg must be a finite number"),
    (dict(cfg_scale=float("inf")), "cfg must be a finite number"),
    (dict(seed=-1), "seed must be between"),
    (dict(steps=2.5), "steps must be a whole number"),
])
def test_settings_refuse_bad_numbers(values, message):
    with pytest.raises(InputError, match=message):
        RenderSettings().with_overrides("counting", **values)


def test_motion_options_refuse_bad_numbers_and_unknown_names():
    with pytest.raises(InputError, match="motion pixel dropout must be a finite number in \\[0, 1\\)"):
        MotionOptions(pixel_dropout=float("nan"))
    with pytest.raises(InputError, match="motion frames must be between 1 and 8"):
        RenderSettings().with_overrides("counting", motion={"frames": 0})
    with pytest.raises(InputError, match="--pose-weight is not an option of counting"):
        RenderSettings().with_overrides("counting", pose_weight=1.0)
