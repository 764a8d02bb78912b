import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"
GOLDEN = FIXTURES / "golden"
PORTRAITS = FIXTURES / "portraits"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN.is_dir():
        pytest.fail(f"golden fixtures missing at {GOLDEN}")
    return GOLDEN


@pytest.fixture(scope="session")
def portraits_dir() -> Path:
    if not PORTRAITS.is_dir():
        pytest.fail(f"portrait fixtures missing at {PORTRAITS}")
    return PORTRAITS


PORTABLE_MKL = "MKL_CBWR"


def in_portable_mkl(request) -> bool:
    """Run the calling test again in a child process whose oneMKL takes its portable code path, unless this is that
    child; returns True in the child (go on with the test) and False in the parent (the child's result is asserted).

    The bit-exact goldens of the vocal separator go through torch.stft/istft, i.e. oneMKL's DFT, whose rounding depends
    on the CPU it dispatches to (AVX-512 Xeons flip 1 LSB in ~0.05 % of the int16 vocals). `MKL_CBWR=COMPATIBLE` makes
    every x86 CPU take the path the goldens were made on; it must be set before torch loads MKL and slows MKL, so only
    these tests run under it."""
    if os.environ.get(PORTABLE_MKL) == "COMPATIBLE":
        return True
    import subprocess
    import sys

    env = python_env()
    env[PORTABLE_MKL] = "COMPATIBLE"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", request.node.nodeid],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    return False


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small kernels: one thread is as fast here and does not fight other jobs for the cores."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def python_env() -> dict:
    """Environment for subprocesses that import the repository's packages."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """A complete tiny model set in the official pretrained_models/ layout, made once per test session."""
    from hallo_core.dev.tiny_models import make_tiny_models

    root = tmp_path_factory.mktemp("tiny_models")
    make_tiny_models(root, seed=0)
    return root


def cut_audio(source: Path, seconds: float, destination: Path) -> Path:
    """The first `seconds` of a fixture wav, as a wav (for short renders)."""
    import av
    import numpy as np

    from hallo_core.audio.decode import decode_audio

    audio = decode_audio(str(source))
    samples = audio.samples[:, : int(seconds * audio.sample_rate)].numpy()
    with av.open(str(destination), "w") as container:
        layout = "mono" if samples.shape[0] == 1 else "stereo"
        stream = container.add_stream("pcm_s16le", rate=audio.sample_rate, layout=layout)
        frame = av.AudioFrame.from_ndarray((samples.T.reshape(1, -1) * 32767).astype(np.int16), format="s16",
                                           layout=layout)
        frame.sample_rate = audio.sample_rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return destination


def tiny_backbone(models_dir, memory: str = "balanced", **options):
    """The backbone of a tiny models folder on the CPU, as `generate` builds it."""
    from hallo_core.backbones import load_backbone
    from hallo_core.runtime.options import EngineOptions

    return load_backbone(models_dir, EngineOptions.resolve("cpu", memory=memory, **options))


def render_all(backbone, identity, speech, prompt, settings, clips=None, previous=None, store=None):
    """Every clip of a render (or of `clips`), through the engine's clip loop."""
    from hallo_core.render.engine import render_clips

    plan = backbone.plan(speech.total_frames, settings)
    video = backbone.prepare_video(identity, speech, prompt, settings)
    return list(render_clips(backbone, video, plan, settings, clips, previous, store))


def random_hallo3_clip(model, seed: int, reference_extra_tokens: int = 0):
    """A clip's conditioning from random inputs of the model's sizes (reference K/V included, optionally longer than a
    frame's tokens), and a random x."""
    import torch

    from hallo_core.hallo3.denoiser import build_clip_conditioning

    config = model.config
    generator = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=generator)  # noqa: E731
    latent_shape = (1, config.latent_frames, config.out_channels, config.latent_height, config.latent_width)
    reference = [rand(1, config.tokens_per_frame + reference_extra_tokens, config.hidden_size)
                 for _ in range(config.num_layers)]
    with torch.no_grad():
        conditioning = build_clip_conditioning(
            model, rand(*latent_shape), rand(1, config.text_length, config.text_embed_dim),
            rand(1, 1 + 4 * (config.latent_frames - 1), 5, config.audio_input_dim // 5), rand(1, 512),
            model.reference_key_values(reference))
    return conditioning, rand(*latent_shape)
