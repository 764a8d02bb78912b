"""The prompt embedding (hallo_core.hallo3.text_encoder) with the tiny T5 against the official FrozenT5Embedder.

tests/fixtures/frontends/t5_tiny_official.{json,safetensors}: token ids for a set of prompts and the embeddings of the
first two, from hallo3's `FrozenT5Embedder(max_length=226)` (transformers 4.45.2, the slow sentencepiece T5Tokenizer,
fp32) on the tiny T5 that `write_tiny_t5` writes.
"""

import json
import pathlib
import shutil

import pytest
import torch
from safetensors.torch import load_file

from hallo_core.dev.tiny_frontends import write_tiny_t5
from hallo_core.errors import ModelFileError
from hallo_core.hallo3.text_encoder import MAX_LENGTH, load_text_encoder

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "frontends"
GOLDEN = json.loads((FIXTURES / "t5_tiny_official.json").read_text())


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return write_tiny_t5(tmp_path_factory.mktemp("t5") / "t5-v1_1-xxl")


@pytest.fixture(scope="module")
def encoder(t5_dir):
    return load_text_encoder(t5_dir, dtype=torch.float32)


def test_official_folder_layout(t5_dir):
    names = {p.name for p in pathlib.Path(t5_dir).iterdir()}
    assert {"config.json", "spiece.model", "tokenizer_config.json", "special_tokens_map.json",
            "model.safetensors.index.json", "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors"} <= names


def test_token_ids_match_official(encoder):
    for prompt, ids in zip(GOLDEN["prompts"], GOLDEN["input_ids"]):
        ours = encoder.token_ids(prompt)
        assert ours.shape == (1, MAX_LENGTH) and ours[0].tolist() == ids, prompt[:40]


def test_truncation_and_padding(encoder):
    long_ids = encoder.token_ids(GOLDEN["prompts"][-1])[0]
    assert int((long_ids != 0).sum()) == 226 and int(long_ids[-1]) == 1  # cut to 226, ending with </s>
    short = encoder.token_ids("A")[0]
    assert short[:2].tolist() == [short[0].item(), 1] and torch.all(short[2:] == 0)  # </s>, then <pad>


def test_embeddings_match_official(encoder):
    # eager attention, as the official transformers ran T5; asserted on its own because sdpa differs from eager by
    # only ~4e-5 here, inside the cross-CPU tolerance below
    assert encoder.model.config._attn_implementation == "eager"
    golden = load_file(FIXTURES / "t5_tiny_official.safetensors")
    for i in range(2):
        out = encoder.encode(GOLDEN["prompts"][i])
        assert out.shape == (1, 226, 32) and out.dtype == torch.float32
        # bit-exact only on the CPU that made the golden: fp32 matmul rounding depends on the CPU's kernels (5.5e-6 on
        # an AVX-512 Xeon; this tiny T5 is 3.3e-5 from its own float64 result)
        torch.testing.assert_close(out, golden[f"embedding.{i}"], atol=5e-5, rtol=0)


def test_no_attention_mask(encoder):
    """Padding tokens take part in attention, as official: masking them would change the embedding."""
    ids = encoder.token_ids("A little girl talking around a campfire")
    with torch.no_grad():
        unmasked = encoder.model(input_ids=ids).last_hidden_state
        masked = encoder.model(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state
    assert torch.equal(encoder.encode("A little girl talking around a campfire"), unmasked)
    assert (masked - unmasked).abs().max() > 1e-3


def test_uncond_is_zeros(encoder):
    uc = encoder.uncond()
    assert uc.shape == (1, 226, 32) and uc.dtype == torch.float32 and not uc.any()


def test_cache_encodes_each_prompt_once(t5_dir):
    enc = load_text_encoder(t5_dir, dtype=torch.float32)
    enc.cache_size = 2
    calls = []
    enc.model.register_forward_hook(lambda *a: calls.append(1))
    first = enc.encode("a")
    assert enc.encode("a") is first and len(calls) == 1
    enc.encode("b")
    enc.encode("c")  # evicts "a"
    assert len(calls) == 3
    enc.encode("a")
    assert len(calls) == 4
    enc.clear_cache()
    enc.encode("c")
    assert len(calls) == 5


def test_bf16_default(t5_dir):
    enc = load_text_encoder(t5_dir)
    assert enc.dtype == torch.bfloat16 and next(enc.model.parameters()).dtype == torch.bfloat16
    out = enc.encode("A woman talking on a dimly lit beach")
    assert out.dtype == torch.bfloat16 and enc.uncond().dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all()


# ----- missing or wrong model files ---------------------------------------------------------------------------


def failing(folder, match):
    parent = pathlib.Path(folder).parent
    before = sorted(p.name for p in parent.rglob("*"))
    with pytest.raises(ModelFileError, match=match) as info:
        load_text_encoder(folder)
    assert "pretrained_models/t5-v1_1-xxl/" in str(info.value) and "\n" not in str(info.value)
    assert sorted(p.name for p in parent.rglob("*")) == before


def test_missing_folder(tmp_path):
    failing(tmp_path / "t5-v1_1-xxl", "T5 folder not found")


@pytest.mark.parametrize("name", ["config.json", "spiece.model"])
def test_missing_file(tmp_path, t5_dir, name):
    folder = tmp_path / "t5"
    shutil.copytree(t5_dir, folder)
    (folder / name).unlink()
    failing(folder, f"{name} missing in")


def test_missing_weights(tmp_path, t5_dir):
    folder = tmp_path / "t5"
    shutil.copytree(t5_dir, folder)
    for shard in folder.glob("*.safetensors"):
        shard.unlink()
    failing(folder, r"no \.safetensors weights in")


def test_corrupt_or_wrong_weights(tmp_path, t5_dir):
    folder = tmp_path / "t5"
    shutil.copytree(t5_dir, folder)
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"\x00" * 64)
    failing(folder, "cannot load the T5 encoder")
    import numpy as np
    from safetensors.numpy import save_file

    for shard in folder.glob("*.safetensors"):
        shard.unlink()
    (folder / "model.safetensors.index.json").unlink()
    save_file({"wav2vec2.feature_projection.projection.weight": np.zeros((4, 4), np.float32)},
              str(folder / "model.safetensors"))
    failing(folder, "the weights do not match the T5 config")
