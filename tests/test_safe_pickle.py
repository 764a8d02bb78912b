"""Official `.pt` files are read without executing pickled code."""

import argparse
import os
import pickle
import zipfile
from collections import OrderedDict

import pytest
import torch

from hallo_core.errors import ModelFileError, UnsafeCheckpointError
from hallo_core.loading.safe_pickle import OpaqueObject, load_torch_checkpoint


class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _CallsExec:
    def __reduce__(self):
        return (exec, ("open('/tmp/hallo_exec_marker','w').write('x')",))


@pytest.mark.parametrize("payload", ["system", "exec"])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, payload):
    marker = tmp_path / "ran"
    evil = _RunsACommand(marker) if payload == "system" else _CallsExec()
    path = tmp_path / "evil.pt"
    torch.save({"module": {"w": torch.ones(2)}, "client_state": evil}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_torch_checkpoint(path)
    assert "refused" in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()
    assert not os.path.exists("/tmp/hallo_exec_marker")


def test_deepspeed_like_container_with_metadata_loads(tmp_path):
    module = OrderedDict(
        [("model.diffusion_model.w", torch.randn(3, 4, dtype=torch.bfloat16)),
         ("model.diffusion_model.b", torch.randn(4)),
         ("ref_model.diffusion_model.v", torch.arange(6).reshape(2, 3)[:, 1:])]  # a non-contiguous view
    )
    container = {
        "module": module,
        "buffer_names": ["model.diffusion_model.mixins.pos_embed.freqs_sin"],
        "optimizer": None,
        "param_shapes": [OrderedDict([("w", torch.Size([3, 4]))])],
        "lr_scheduler": {"last_epoch": 3},
        "args": argparse.Namespace(lr=1e-4, mode="inference", dims=[1, 2]),
        "ds_config": {"bf16": {"enabled": True}},
        "ds_version": "0.14.0",
        "global_steps": 1000,
        "dp_world_size": 8,
        "device": torch.device("cpu"),
        "dtype": torch.bfloat16,
    }
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save(container, path)
    loaded = load_torch_checkpoint(path)
    for name, tensor in module.items():
        assert loaded["module"][name].dtype == tensor.dtype
        assert torch.equal(loaded["module"][name], tensor)
    assert isinstance(loaded["args"], OpaqueObject)
    assert loaded["args"].state == {"lr": 1e-4, "mode": "inference", "dims": [1, 2]}
    assert loaded["param_shapes"][0]["w"] == torch.Size([3, 4])
    assert loaded["ds_version"] == "0.14.0" and loaded["dtype"] == torch.bfloat16


def test_tensors_are_memory_mapped_not_copied(tmp_path):
    path = tmp_path / "big.pt"
    torch.save({"module": {"w": torch.randn(256, 1024)}}, path)
    first = load_torch_checkpoint(path)["module"]["w"]
    second = load_torch_checkpoint(path)["module"]["w"]
    # Two reads are two independent private mappings of the file: writing one never changes the file or the other.
    first.zero_()
    assert torch.count_nonzero(second) > 0
    assert torch.count_nonzero(load_torch_checkpoint(path)["module"]["w"]) > 0


def test_legacy_and_damaged_files_are_refused_with_one_line(tmp_path):
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(1)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(ModelFileError, match="not a PyTorch zip checkpoint"):
        load_torch_checkpoint(legacy)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(ModelFileError):
        load_torch_checkpoint(plain)
    good = tmp_path / "good.pt"
    torch.save({"w": torch.randn(1000)}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(ModelFileError):
        load_torch_checkpoint(truncated)
    with pytest.raises(ModelFileError, match="not found"):
        load_torch_checkpoint(tmp_path / "missing.pt")


def test_zip_without_pickle_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/readme.txt", "hello")
    with pytest.raises(ModelFileError, match="data.pkl"):
        load_torch_checkpoint(path)
