"""The render loop: segments equal one render, the reference network runs once, clip arithmetic and seeds."""

import pytest
import torch

from conftest import cut_audio
from hallo_core.clip_plan import ClipPlan, clip_seed, reference_seed
from hallo_core.errors import InputError
from hallo_core.generate import build_pipeline
from hallo_core.model_files import ModelFiles
from hallo_core.pipeline import RenderSettings


@pytest.fixture(scope="module")
def short_render(tiny_models, portraits_dir, tmp_path_factory):
    audio = cut_audio(portraits_dir / "0008.wav", 5.0, tmp_path_factory.mktemp("audio") / "speech.wav")
    pipeline = build_pipeline(ModelFiles.from_pretrained_dir(tiny_models), device="cpu")
    identity = pipeline.identity(str(portraits_dir / "0008.jpg"))
    speech = pipeline.speech(str(audio), separate_vocals=False)
    return pipeline, identity, speech


def test_segments_equal_one_render(short_render):
    pipeline, identity, speech = short_render
    settings = RenderSettings(steps=2, seed=3)
    plan = pipeline.plan(speech.total_frames)
    assert plan.num_clips == 3
    whole = list(pipeline.render(identity, speech, "a man", settings))
    first = list(pipeline.render(identity, speech, "a man", settings, clips=range(0, 2)))
    second = list(pipeline.render(identity, speech, "a man", settings, clips=range(2, 3),
                                  previous_frames=first[-1].motion_frames))
    for a, b in zip(whole, first + second):
        assert a.index == b.index
        assert torch.equal(a.frames, b.frames)
    assert sum(len(c.frames) for c in whole) == speech.total_frames
    # A different seed gives different frames (the check above is not vacuous).
    other = next(pipeline.render(identity, speech, "a man", RenderSettings(steps=2, seed=4), clips=range(0, 1)))
    assert not torch.equal(other.frames, whole[0].frames)


def test_later_segment_needs_the_previous_frames(short_render):
    pipeline, identity, speech = short_render
    with pytest.raises(InputError, match="previous segment"):
        next(pipeline.render(identity, speech, "", RenderSettings(steps=2), clips=range(1, 2)))


def test_reference_network_runs_once_per_video(short_render, monkeypatch):
    pipeline, identity, speech = short_render
    pipeline._reference_cache.clear()
    calls = []
    original_use = pipeline.models.use

    def counting_use(name):
        context = original_use(name)
        if name != "reference_net":
            return context

        class Counting:
            def __enter__(self):
                model = context.__enter__()
                forward = model.forward

                def counted(*args, **kwargs):
                    calls.append(1)
                    return forward(*args, **kwargs)

                model.forward = counted
                return model

            def __exit__(self, *exc):
                return context.__exit__(*exc)

        return Counting()

    monkeypatch.setattr(pipeline.models, "use", counting_use)
    clips = list(pipeline.render(identity, speech, "a man", RenderSettings(steps=2, seed=5)))
    assert len(clips) == 3
    assert len(calls) == 1


def test_clip_plan_matches_the_official_loop():
    plan = ClipPlan(total_frames=245)
    assert plan.new_frames_per_clip == 47 and plan.num_clips == 6
    assert plan.clip_output_frames(0) == range(0, 47)
    assert plan.clip_output_frames(5) == range(235, 245)
    assert plan.clips_for_frames(40, 100) == range(0, 3)
    assert plan.segment_clips(2.0, 2.0) == range(1, 3)  # 50 frames -> clip 1 starts at frame 47
    assert ClipPlan(total_frames=1).num_clips == 1
    assert ClipPlan(total_frames=47).num_clips == 1 and ClipPlan(total_frames=48).num_clips == 2


def test_seed_policy_is_per_clip_and_documented():
    assert clip_seed(42, 0) != clip_seed(42, 1) != clip_seed(43, 1)
    assert clip_seed(42, 3) == clip_seed(42, 3)
    assert reference_seed(42) not in {clip_seed(42, c) for c in range(100)}
