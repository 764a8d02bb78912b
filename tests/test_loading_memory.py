"""Loading streams weights into a meta-initialised model: never two full copies in memory."""

import json
import subprocess
import sys

import torch
from conftest import REPO, python_env

from hallo_core.hallo3.checkpoint import CONFIG_KEY, FORMAT_KEY, FORMATS
from hallo_core.hallo3.config import Hallo3Config
from hallo_core.hallo3.convert import convert_transformers  # noqa: F401  (import check)
from hallo_core.hallo3.transformer import Hallo3Transformer
from hallo_core.loading.safetensors_writer import write_safetensors

CONFIG = Hallo3Config(
    num_layers=6, num_attention_heads=8, attention_head_dim=64, mlp_dim=2048, time_embed_dim=256,
    text_embed_dim=512, latent_height=12, latent_width=18, audio_input_dim=5 * 2 * 64, audio_intermediate_dim=128,
    audio_context_tokens=4, audio_token_dim=128, face_token_dim=128,
)


def _write_random_checkpoint(path):
    torch.manual_seed(0)
    model = Hallo3Transformer(CONFIG)
    state = model.state_dict()
    entries = [(name, tuple(t.shape), t.dtype, (lambda t=t: t)) for name, t in state.items()]
    write_safetensors(path, entries, {FORMAT_KEY: FORMATS["main"], CONFIG_KEY: CONFIG.to_json()})
    return sum(t.numel() * t.element_size() for t in state.values())


def test_safetensors_load_peak_memory_is_one_copy(tmp_path):
    path = tmp_path / "hallo3_transformer_fp32.safetensors"
    size = _write_random_checkpoint(path)
    assert size > 150e6  # big enough that a second copy would stand out from allocator noise
    result = subprocess.run([sys.executable, str(REPO / "tests" / "helpers" / "measure_load_rss.py"), str(path)],
                            capture_output=True, text=True, env=python_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["model_bytes"] == size
    # One copy of the weights, plus at most one tensor in flight and allocator slack.
    assert measured["peak_growth"] < 1.25 * size, measured
    assert measured["final_growth"] > 0.8 * size, measured
