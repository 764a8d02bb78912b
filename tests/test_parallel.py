"""One video across processes (hallo_core/parallel/): every mode's step equals the one-process step, on CPU processes
over gloo; a real `torchrun ... generate --parallel` render equals the one-process render and resumes; bad plans are
one-line errors before any model loads."""

import dataclasses
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import random_hallo3_clip

from conftest import PORTRAITS, cut_audio, python_env
from hallo_core.errors import InputError
from hallo_core.runtime.parallel_plan import ParallelPlan

TOLERANCE = 2e-6  # fp32: a branch or a head computed apart differs from the batched one by float rounding only


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(worker, world: int, *args) -> None:
    """`worker(rank, world, *args)` in `world` CPU processes joined over gloo on a free localhost port."""
    mp.spawn(_entry, args=(worker, world, _free_port(), args), nprocs=world, join=True)


def _entry(rank, worker, world, port, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    try:
        worker(rank, world, *args)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


# --- Hallo3 -------------------------------------------------------------------------------------------------------
def _hallo3_config(heads: int):
    from hallo_core.dev.tiny_transformer import tiny_config

    # 3x5 tokens per latent frame: 15 does not divide by 2 or 4, so the shares are uneven (the padded path)
    return dataclasses.replace(tiny_config(32, 5 * 12 * 32), num_attention_heads=heads, latent_height=6,
                               latent_width=10, latent_frames=3)


def _hallo3_model(config):
    from hallo_core.dev.bench_support import random_module
    from hallo_core.hallo3.transformer import Hallo3Transformer

    return random_module(lambda: Hallo3Transformer(config), torch.device("cpu"), torch.float32, seed=0)


def _hallo3_inputs(model):
    return random_hallo3_clip(model, seed=1, reference_extra_tokens=5)


def _backbone(family, loaders, config=None):
    """What a session needs of a backbone: its family, device, config and a models provider with loaders."""
    from hallo_core.memory.residency import LocalModels
    from hallo_core.runtime.options import EngineOptions

    return SimpleNamespace(family=family, options=EngineOptions(), config=config,
                           models=LocalModels(loaders, "cpu"))


def _hallo3_case(rank, mode, degree, heads, guidance=None, step=1):
    """One Hallo3 step through a ParallelSession (leader + followers, channel and collectives) against the same step
    in one process; asserted on rank 0."""
    from hallo_core.hallo3.backbone import Hallo3Settings
    from hallo_core.hallo3.denoiser import GuidedDenoiser
    from hallo_core.hallo3.sampler import sat_schedule
    from hallo_core.parallel import ParallelSession, check_plan

    config = _hallo3_config(heads)
    backbone = _backbone("hallo3", {"transformer": lambda device: _hallo3_model(config)}, config)
    plan = check_plan(backbone, Hallo3Settings(guidance=guidance), ParallelPlan.resolve(mode, degree))
    session = ParallelSession(backbone, plan)
    if not plan.leader:
        session.follow()
        return
    single = _hallo3_model(config)
    conditioning, x = _hallo3_inputs(single)
    schedule = sat_schedule(4)
    expected = GuidedDenoiser(single, conditioning, schedule, separate=guidance)(x, step)
    with backbone.models.use("transformer") as model:
        denoiser = session._lead_hallo3_clip(GuidedDenoiser(model, conditioning, schedule, separate=guidance))
        got = session.lead(lambda: denoiser(x, step))
    difference = (got - expected).abs().max().item()
    assert difference < TOLERANCE, f"{plan.describe()}: max |difference| {difference}"


# --- Hallo / Hallo2 ---------------------------------------------------------------------------------------------
def _unet_case(rank, unet_root, per_frame_masks):
    from hallo_core.hallo_unet.backbone import UNetSettings
    from hallo_core.hallo_unet.checkpoint import load_unet_models
    from hallo_core.hallo_unet.clip import ClipInputs, encode_frames, motion_frame_pixels, prepare_clip
    from hallo_core.parallel import ParallelSession, check_plan

    models = load_unet_models(unet_root)
    # float64: the tiny UNet amplifies fp32 rounding (its convolutions round differently for 16 and 32 rows) to
    # ~1e-5, which would hide a real error; in float64 a batch computed apart must agree to ~1e-13
    denoiser = models.networks.denoiser.double()
    backbone = _backbone("unet", {"denoiser": lambda device: denoiser})
    plan = check_plan(backbone, UNetSettings(), ParallelPlan.resolve("cfg", None))
    session = ParallelSession(backbone, plan)
    if not plan.leader:
        session.follow()
        return
    g = torch.Generator().manual_seed(0)
    size, latent = 64, 8
    levels = [torch.rand((latent >> level) ** 2, generator=g) for level in range(4)]
    pyramid = [m.repeat(16, 1) for m in levels] if per_frame_masks else levels
    inputs = ClipInputs(
        reference_latents=encode_frames(models.vae, motion_frame_pixels(torch.rand(3, size, size, generator=g) * 2 - 1,
                                                                        None)),
        face_embedding=torch.randn(1, 512, generator=g),
        face_region=torch.zeros(1, 3, size, size).index_fill_(2, torch.arange(16, 48), 1.0),
        full_mask=pyramid, face_mask=pyramid, lip_mask=pyramid,
        audio_windows=torch.randn(1, 16, 5, 12, 32, generator=g), motion_scale=(1.0, 0.8, 1.2))
    models.networks.denoiser.float()
    cond = _double(prepare_clip(models, inputs).conditioning)
    denoiser.double()
    x = torch.randn(2, 4, 16, latent, latent, generator=g, dtype=torch.float64)
    with torch.no_grad():
        expected = type(denoiser).forward(denoiser, x, 499, cond)  # the class's forward: one process
        with backbone.models.use("denoiser") as model:
            got = session.lead(lambda: model(x, 499, cond))
    difference = (got - expected).abs().max().item()
    assert difference < 1e-11, f"UNet cfg: max |difference| {difference}"


def _double(value):
    """A conditioning (dataclasses, dicts, tuples of tensors) with its float tensors in float64."""
    if isinstance(value, torch.Tensor):
        return value.double() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {name: _double(item) for name, item in value.items()}
    if isinstance(value, tuple):
        return tuple(_double(item) for item in value)
    if dataclasses.is_dataclass(value):
        return type(value)(**{f.name: _double(getattr(value, f.name)) for f in dataclasses.fields(value)})
    return value


def _two_process_worker(rank, world, unet_root):
    from hallo_core.hallo3.denoiser import SeparateGuidance

    _hallo3_case(rank, "cfg", None, heads=4)
    _hallo3_case(rank, "ulysses", None, heads=4)  # 15 tokens per frame: shares 8 and 7
    # all 4 branches on both processes, one of them without the reference keys/values
    _hallo3_case(rank, "ulysses", None, heads=4, guidance=SeparateGuidance(3.0, 4.0, reference=2.0), step=3)
    _unet_case(rank, unet_root, per_frame_masks=False)
    _unet_case(rank, unet_root, per_frame_masks=True)


def _four_process_worker(rank, world):
    from hallo_core.hallo3.denoiser import SeparateGuidance

    _hallo3_case(rank, "cfg,ulysses", None, heads=4)  # 2 branches x 2
    _hallo3_case(rank, "ulysses", None, heads=4)  # 15 tokens: shares 4, 4, 4, 3
    _hallo3_case(rank, "cfg", None, heads=4, guidance=SeparateGuidance(3.0, 4.0, reference=2.0))  # 4 branches


@pytest.fixture(scope="module")
def tiny_unet(tmp_path_factory):
    from hallo_core.dev.tiny_unet import write_tiny_hallo_unet

    root = tmp_path_factory.mktemp("parallel_unet")
    write_tiny_hallo_unet(root, seed=3)
    return str(root)


def test_two_processes_cfg_and_ulysses_steps_equal_one_process(tiny_unet):
    _spawn(_two_process_worker, 2, tiny_unet)


def test_four_processes_cfg_ulysses_and_four_branches_equal_one_process():
    _spawn(_four_process_worker, 4)


def test_token_split_covers_every_token_once():
    from hallo_core.parallel.ulysses import TokenSplit

    for per_frame, degree in ((1350, 4), (1350, 8), (15, 2), (24, 3)):
        splits = [TokenSplit.make(13, per_frame, degree, r, torch.device("cpu")) for r in range(degree)]
        owned = torch.sort(torch.cat([s.local for s in splits])).values
        assert torch.equal(owned, torch.arange(13 * per_frame))
        assert max(s.size for s in splits) - min(s.size for s in splits) <= 1
        # the gathered padded layout, reordered, is the one-process order
        padded = torch.cat([s.pad(s.local.float().unsqueeze(0), dim=1) for s in splits], dim=1)
        assert torch.equal(padded[0].index_select(0, splits[0].order), torch.arange(13 * per_frame).float())


# --- plans refused in one line, before any model loads --------------------------------------------------------
def _env(world, rank=0):
    return {"WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank)}


@pytest.mark.parametrize("parallel, degree, env, message", [
    ("cfg", None, {}, "torchrun --nproc-per-node N"),
    ("pipeline", None, _env(2), "takes cfg, ulysses or cfg,ulysses"),
    ("cfg", 2, _env(2), "--ulysses-degree needs --parallel ulysses"),
    (None, None, _env(2), "--parallel was not given"),
    ("ulysses", 1, _env(2), "at least 2"),
])
def test_bad_parallel_options_are_one_line(parallel, degree, env, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        ParallelPlan.resolve(parallel, degree, env)
    assert "\n" not in str(error.value)


def test_default_plan_is_one_process_and_leaves_options_unchanged():
    from hallo_core.runtime.options import EngineOptions

    assert ParallelPlan.resolve(None, None, {}) == ParallelPlan() and not ParallelPlan().active
    assert EngineOptions.resolve("cpu") == EngineOptions()
    assert "parallel" not in EngineOptions().identity()


def test_bad_combinations_for_the_model_are_one_line():
    from hallo_core.hallo3.backbone import Hallo3Settings
    from hallo_core.hallo3.denoiser import SeparateGuidance
    from hallo_core.hallo_unet.backbone import UNetSettings
    from hallo_core.parallel import check_plan

    hallo3 = _backbone("hallo3", {}, _hallo3_config(heads=48))
    unet = _backbone("unet", {})
    cases = [
        (hallo3, Hallo3Settings(cfg_scale=1.0), "cfg", None, 2, "cfg scale 1"),
        (hallo3, Hallo3Settings(), "cfg", None, 3, "2 branches: start 2 processes, not 3"),
        (hallo3, Hallo3Settings(guidance=SeparateGuidance(reference=2.0)), "cfg", None, 2, "4 branches"),
        (hallo3, Hallo3Settings(), "ulysses", None, 5, "does not divide the transformer's 48 attention heads"),
        (hallo3, Hallo3Settings(), "cfg,ulysses", 4, 4, "needs 8 processes, not 4"),
        (hallo3, Hallo3Settings(step_cache=0.1), "ulysses", None, 2, "--step-cache"),
        (hallo3, Hallo3Settings(cfg_cache=0.3), "cfg", None, 2, "--cfg-cache"),
        (unet, UNetSettings(), "ulysses", None, 2, "use --parallel cfg"),
        (unet, UNetSettings(cfg_scale=1.0), "cfg", None, 2, "cfg scale 1"),
        (SimpleNamespace(family="hallo3", models=object()), Hallo3Settings(), "cfg", None, 2, "models folder"),
    ]
    for backbone, settings, mode, degree, world, message in cases:
        with pytest.raises(InputError) as error:
            check_plan(backbone, settings, ParallelPlan.resolve(mode, degree, _env(world)))
        assert message in str(error.value) and "\n" not in str(error.value), (mode, world, str(error.value))
    assert check_plan(hallo3, Hallo3Settings(guidance=SeparateGuidance(reference=2.0)),
                      ParallelPlan.resolve("cfg,ulysses", None, _env(8))).ulysses == 2


def test_parallel_without_torchrun_is_refused_by_the_command_line(tmp_path, capsys):
    from hallo_core.cli import main

    status = main(["generate", "--image", "i.jpg", "--audio", "a.wav", "--models", str(tmp_path), "--out",
                   str(tmp_path / "o.mp4"), "--parallel", "cfg"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.startswith("error: --parallel cfg") and "\n" not in err


# --- a real render under torchrun ---------------------------------------------------------------------------------
def _torchrun(processes, *args, cwd):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
               "--master-port", str(_free_port()), "-m", "hallo_core", "generate", *args]
    env = python_env()
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _clips(render_dir):
    from hallo_core.media.video import read_clip_frames
    from safetensors.torch import load_file

    names = sorted(n for n in os.listdir(render_dir) if n.startswith("clip_"))
    return ([read_clip_frames(os.path.join(render_dir, n)).astype(int) for n in names],
            [load_file(os.path.join(render_dir, n.replace("clip_", "state_").replace(".mkv", ".safetensors")))
             for n in names])


def _assert_same_render(one, many):
    frames_one, states_one = _clips(one)
    frames_many, states_many = _clips(many)
    assert len(frames_one) == len(frames_many) == 2
    for a, b in zip(frames_one, frames_many):
        # the float frames agree to ~1e-6, so an 8-bit value may round the other way, rarely
        assert a.shape == b.shape and np.abs(a - b).max() <= 1 and (a != b).mean() < 0.01
    for a, b in zip(states_one, states_many):
        for name in a:
            assert torch.allclose(a[name].float(), b[name].float(), atol=1e-5), name


def test_torchrun_generate_equals_one_process_and_resumes(tiny_models, tmp_path):
    from hallo_core.generate import generate
    from hallo_core.runtime.options import EngineOptions

    audio = cut_audio(PORTRAITS / "0003.wav", 3.0, tmp_path / "speech.wav")  # 75 frames: 2 clips
    image = str(PORTRAITS / "0003.jpg")
    common = ["--image", image, "--audio", str(audio), "--models", str(tiny_models), "--steps", "2", "--keep-render"]
    from hallo_core.hallo3.backbone import Hallo3Settings

    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process
    try:  # the command line's `--steps 2` render, in this process
        one = generate(image, str(audio), str(tmp_path / "a.mp4"), str(tiny_models), settings=Hallo3Settings(steps=2),
                       options=EngineOptions.resolve("cpu"), keep_render=True)
    finally:
        torch.set_num_threads(previous)
    assert one.clips == 2

    many = _torchrun(4, *common, "--out", str(tmp_path / "b.mp4"), "--parallel", "cfg,ulysses", cwd=tmp_path)
    assert many.returncode == 0, many.stderr[-3000:]
    assert many.stdout.count("b.mp4: 75 frames") == 1  # only rank 0 prints
    _assert_same_render(tmp_path / "a.render", tmp_path / "b.render")

    # resume: a lost clip is rendered again from the kept state of the clip before it, under another plan
    os.remove(tmp_path / "b.render" / "clip_00001.mkv")
    again = _torchrun(2, *common, "--out", str(tmp_path / "b.mp4"), "--parallel", "cfg", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 resumed" in again.stdout
    _assert_same_render(tmp_path / "a.render", tmp_path / "b.render")

    # a user error met by rank 0 alone (here: the output folder) ends every process with status 2, one line
    failed = _torchrun(2, *common, "--out", str(tmp_path / "missing" / "c.mp4"), "--parallel", "cfg", cwd=tmp_path)
    assert failed.returncode != 0
    assert failed.stderr.count("error: the folder of output") == 1
