"""Loading the transformers from every supported layout gives the same model; `convert` round-trips."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import python_env
from safetensors import safe_open
from safetensors.torch import load_file

from hallo_core.errors import ModelFileError
from hallo_core.hallo3.checkpoint import load_reference_net, load_transformer


def _short_clip_output(model, reference_net, io):
    """A 3-latent-frame (9 video frames) forward of the golden model (fast) with the golden's inputs."""
    with torch.no_grad():
        bank = reference_net(io["inputs.ref_latent"])
        kv = model.reference_key_values(bank)
        audio = model.encode_audio(io["inputs.audio_emb"][:, :9])
        face = model.encode_face(io["inputs.face_emb"])
        latents = torch.cat([io["inputs.x_noisy"][:, :3], io["inputs.concat"][:, :3]], dim=2)
        return model(latents.to(model.dtype), torch.tensor([119.0]), io["inputs.text_cond"], audio, face, kv)


@pytest.fixture(scope="module")
def golden_io(golden_dir):
    return load_file(golden_dir / "hallo3_tiny.io.safetensors")


@pytest.fixture(scope="module")
def golden_weights(golden_dir):
    return golden_dir / "hallo3_tiny.weights.safetensors"


@pytest.fixture(scope="module")
def reference_output(golden_weights, golden_io):
    model = load_transformer(golden_weights, dtype=torch.float32)
    return _short_clip_output(model, load_reference_net(golden_weights, dtype=torch.float32), golden_io)


def _write_official_container(root: Path, weights: Path) -> Path:
    """The official download layout: hallo3/latest + hallo3/1/mp_rank_00_model_states.pt (DeepSpeed container)."""
    import argparse

    folder = root / "hallo3" / "1"
    folder.mkdir(parents=True)
    (root / "hallo3" / "latest").write_text("1\n")
    module = load_file(weights)
    module["first_stage_model.encoder.conv_in.weight"] = torch.zeros(2)  # other engine parts are ignored
    torch.save({"module": module, "args": argparse.Namespace(bf16=True), "global_steps": 1}, folder /
               "mp_rank_00_model_states.pt")
    return root


def test_official_container_layout_loads_the_same_model(tmp_path, golden_weights, golden_io, reference_output):
    root = _write_official_container(tmp_path / "pretrained_models", golden_weights)
    for path in (root, root / "hallo3", root / "hallo3" / "1" / "mp_rank_00_model_states.pt"):
        model = load_transformer(path, dtype=torch.float32)
        out = _short_clip_output(model, load_reference_net(path, dtype=torch.float32), golden_io)
        assert torch.equal(out, reference_output)


def test_convert_round_trip(tmp_path, golden_weights, golden_io, reference_output):
    from hallo_core.hallo3.vae_checkpoint import load_vae_model, write_tiny_sat_vae

    root = _write_official_container(tmp_path / "pretrained_models", golden_weights)
    (root / "cogvideox-5b-i2v-sat" / "vae").mkdir(parents=True)
    write_tiny_sat_vae(root / "cogvideox-5b-i2v-sat" / "vae" / "3d-vae.pt")
    result = subprocess.run([sys.executable, "-m", "hallo_core", "convert", "--src", str(root), "--dst",
                             str(tmp_path / "out"), "--dtype", "fp32"], capture_output=True, text=True,
                            env=python_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    main = tmp_path / "out" / "hallo3_transformer_fp32.safetensors"
    ref = tmp_path / "out" / "hallo3_reference_fp32.safetensors"
    vae = tmp_path / "out" / "cogvideox_5b_i2v_vae_fp32.safetensors"
    assert result.stdout.split() == [str(main), str(ref), str(vae)]
    official_vae = load_vae_model(root / "cogvideox-5b-i2v-sat" / "vae" / "3d-vae.pt", dtype=torch.float32)
    converted_vae = load_vae_model(vae, dtype=torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(official_vae.state_dict().values(),
                                                  converted_vae.state_dict().values()))
    with safe_open(main, "pt") as f:
        assert f.metadata()["hallo3.format"] == "hallo3-transformer"
        assert "transformer_blocks.0.attn_audio.to_k.weight" in f.keys()
    out = _short_clip_output(load_transformer(main, dtype=torch.float32),
                             load_reference_net(ref, dtype=torch.float32), golden_io)
    assert torch.equal(out, reference_output)
    # The files are not interchangeable: the main net refuses the reference file and vice versa.
    with pytest.raises(ModelFileError, match="hallo3-reference"):
        load_transformer(ref)


def test_convert_to_bf16_and_fp8_storage(tmp_path, golden_weights, golden_io, reference_output):
    from hallo_core.hallo3.convert import convert_transformers

    for dtype, bound in (("bf16", 0.05), ("fp8_e4m3fn", 0.5)):
        main, ref = convert_transformers(str(golden_weights), str(tmp_path / dtype), dtype)
        with safe_open(main, "pt") as f:
            stored = {name: f.get_slice(name).get_dtype() for name in f.keys()}
        if dtype == "fp8_e4m3fn":
            assert stored["transformer_blocks.0.ff.net.0.proj.weight"] == "F8_E4M3"
            assert stored["transformer_blocks.0.norm1.norm.weight"] == "BF16"
            assert stored["patch_embed.pos_embedding"] == "BF16"
        else:
            assert set(stored.values()) == {"BF16"}
        model = load_transformer(main, dtype=torch.float32)
        out = _short_clip_output(model, load_reference_net(ref, dtype=torch.float32), golden_io)
        error = (out - reference_output).abs().max().item()
        assert 0 < error < bound * reference_output.abs().max().item()


def test_wrong_files_give_one_line_errors(tmp_path, golden_dir):
    with pytest.raises(ModelFileError, match="hf download fudan-generative-ai/hallo3"):
        load_transformer(tmp_path)
    (tmp_path / "hallo3").mkdir()
    (tmp_path / "hallo3" / "latest").write_text("7")
    with pytest.raises(ModelFileError, match="names '7'"):
        load_transformer(tmp_path)
    with pytest.raises(ModelFileError, match="no 'model.diffusion_model"):
        load_transformer(golden_dir / "hallo3_tiny.io.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ModelFileError, match="not a readable safetensors"):
        load_transformer(broken)
