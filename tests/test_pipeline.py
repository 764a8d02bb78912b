"""The render loop: segments equal one render, the reference network runs once, clip arithmetic and seeds."""

import shutil

import pytest
import torch
from conftest import cut_audio, render_all, tiny_backbone

from hallo_core.errors import InputError, ModelFileError
from hallo_core.hallo3.backbone import Hallo3Settings as RenderSettings
from hallo_core.hallo3.backbone import clip_seed, reference_seed
from hallo_core.hallo3.vae_checkpoint import diffusers_to_sat_key, tiny_sat_vae_state
from hallo_core.loading.safe_pickle import load_torch_checkpoint
from hallo_core.render.clip_plan import ClipPlan


@pytest.fixture(scope="module")
def short_render(tiny_models, portraits_dir, tmp_path_factory):
    audio = cut_audio(portraits_dir / "0008.wav", 5.0, tmp_path_factory.mktemp("audio") / "speech.wav")
    pipeline = tiny_backbone(tiny_models)
    identity = pipeline.prepare_identity(str(portraits_dir / "0008.jpg"))
    speech = pipeline.prepare_speech(str(audio), separate_vocals=False)
    return pipeline, identity, speech


def test_segments_equal_one_render(short_render):
    pipeline, identity, speech = short_render
    settings = RenderSettings(steps=2, seed=3)
    plan = pipeline.plan(speech.total_frames, settings)
    assert plan.num_clips == 3
    whole = render_all(pipeline, identity, speech, "a man", settings)
    first = render_all(pipeline, identity, speech, "a man", settings, clips=range(0, 2))
    second = render_all(pipeline, identity, speech, "a man", settings, clips=range(2, 3),
                        previous=first[-1].continuation)
    for a, b in zip(whole, first + second):
        assert a.index == b.index
        assert torch.equal(a.frames, b.frames)
    assert sum(len(c.frames) for c in whole) == speech.total_frames
    # A different seed gives different frames (the check above is not vacuous).
    other = render_all(pipeline, identity, speech, "a man", RenderSettings(steps=2, seed=4), clips=range(0, 1))[0]
    assert not torch.equal(other.frames, whole[0].frames)


def test_later_segment_needs_the_previous_frames(short_render):
    pipeline, identity, speech = short_render
    with pytest.raises(InputError, match="previous segment"):
        render_all(pipeline, identity, speech, "", RenderSettings(steps=2), clips=range(1, 2))


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
    clips = render_all(pipeline, identity, speech, "a man", RenderSettings(steps=2, seed=5))
    assert len(clips) == 3
    assert len(calls) == 1


def test_clip_plan_matches_the_official_loop():
    plan = ClipPlan(total_frames=245, new_frames_per_clip=47)
    assert plan.new_frames_per_clip == 47 and plan.num_clips == 6
    assert plan.clip_output_frames(0) == range(0, 47)
    assert plan.clip_output_frames(5) == range(235, 245)
    assert plan.clips_for_frames(40, 100) == range(0, 3)
    assert plan.segment_clips(2.0, 2.0) == range(1, 3)  # 50 frames -> clip 1 starts at frame 47
    assert ClipPlan(total_frames=1).num_clips == 1
    assert ClipPlan(total_frames=47).num_clips == 1 and ClipPlan(total_frames=48).num_clips == 2
    assert ClipPlan(total_frames=33, new_frames_per_clip=16).num_clips == 3  # Hallo/Hallo2: 16 new frames a clip


def test_seed_policy_is_per_clip_and_documented():
    assert clip_seed(42, 0) != clip_seed(42, 1) != clip_seed(43, 1)
    assert clip_seed(42, 3) == clip_seed(42, 3)
    assert reference_seed(42) not in {clip_seed(42, c) for c in range(100)}



def _with_container_extras(tiny_models, tmp_path, extras: dict):
    """A copy of the tiny models whose Hallo3 container also carries `extras`, as some official checkpoints do."""
    root = tmp_path / "pretrained_models"
    shutil.copytree(tiny_models, root)
    container = root / "hallo3" / "1" / "mp_rank_00_model_states.pt"
    module = {name: tensor.clone() for name, tensor in load_torch_checkpoint(container)["module"].items()}
    module.update(extras)
    torch.save({"module": module}, container)
    return root


def test_vae_weights_inside_the_container_override_3d_vae(tiny_models, tmp_path):
    """As the official loader: `first_stage_model.*` in the Hallo3 container take precedence over 3d-vae.pt."""
    other_vae = tiny_sat_vae_state(seed=123)
    files = _with_container_extras(tiny_models, tmp_path,
                                   {f"first_stage_model.{name}": tensor for name, tensor in other_vae.items()})
    with tiny_backbone(files).models.use("vae") as vae:
        weights = dict(vae.model.named_parameters())
    levels = sum(1 for k in other_vae if k.startswith("encoder.down.") and k.endswith(".downsample.conv.weight")) + 1
    name = "decoder.conv_out.conv.weight"
    assert torch.equal(weights[name], other_vae[diffusers_to_sat_key(name, levels)].float())


def test_t5_weights_inside_the_container_override_the_t5_folder(tiny_models, tmp_path):
    """`conditioner.embedders.0.transformer.*` in the container replace the T5 folder's weights, as officially."""
    pipeline = tiny_backbone(tiny_models)
    with pipeline.models.use("text_encoder") as encoder:
        shared = encoder.model.shared.weight.detach().clone()
        before = encoder.encode("a man")
    replacement = torch.randn(shared.shape, generator=torch.Generator().manual_seed(5))
    files = _with_container_extras(tiny_models, tmp_path, {"conditioner.embedders.0.transformer.shared.weight":
                                                           replacement})
    with tiny_backbone(files).models.use("text_encoder") as encoder:
        assert torch.equal(encoder.model.shared.weight.detach(), replacement.to(shared.dtype))
        assert not torch.allclose(encoder.encode("a man"), before)


@pytest.mark.parametrize("name, tensor", [("not_a_t5_weight", torch.zeros(2)), ("shared.weight", torch.zeros(3, 3))])
def test_container_t5_weights_that_do_not_fit_are_refused(tiny_models, tmp_path, name, tensor):
    files = _with_container_extras(tiny_models, tmp_path, {f"conditioner.embedders.0.transformer.{name}": tensor})
    with pytest.raises(ModelFileError, match="T5 weights do not fit"):
        with tiny_backbone(files).models.use("text_encoder"):
            pass
