"""Checkpoint reading: every layout loads the same numbers; every broken checkpoint fails clearly."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import encoders
from encoders.checkpoint import open_checkpoint, resolve
from mmsearch.errors import CheckpointError, InvalidInput, NotFound
from images import TEXTS, mixed_batch


@pytest.fixture
def ckpt_copy(tiny_siglip_dir, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_siglip_dir, dst)
    return dst


def _features(path):
    enc = encoders.load(str(path))
    return enc.encode_images(mixed_batch()[:2]), enc.encode_texts(TEXTS[:2])


def test_sharded_safetensors_and_bin_load_identically(tiny_siglip_dir, tmp_path):
    from transformers import SiglipModel

    model = SiglipModel.from_pretrained(tiny_siglip_dir)
    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_siglip_dir, sharded)
    (sharded / "model.safetensors").unlink()
    model.save_pretrained(sharded, max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("model-*.safetensors"))) > 1

    as_bin = tmp_path / "bin"
    shutil.copytree(tiny_siglip_dir, as_bin)
    torch.save(load_file(as_bin / "model.safetensors"), as_bin / "pytorch_model.bin")
    (as_bin / "model.safetensors").unlink()

    base = _features(tiny_siglip_dir)
    for other in (_features(sharded), _features(as_bin)):
        for a, b in zip(base, other):
            np.testing.assert_array_equal(a, b)


def test_digest_tells_weights_apart(tiny_siglip_dir, ckpt_copy):
    assert open_checkpoint(tiny_siglip_dir).digest == open_checkpoint(ckpt_copy).digest
    state = load_file(ckpt_copy / "model.safetensors")
    state["logit_bias"] = state["logit_bias"] + 1.0
    save_file(state, ckpt_copy / "model.safetensors", metadata={"format": "pt"})
    assert open_checkpoint(tiny_siglip_dir).digest != open_checkpoint(ckpt_copy).digest
    assert encoders.load(str(ckpt_copy)).digest == open_checkpoint(ckpt_copy).digest


def _rewrite(path, edit):
    state = load_file(path / "model.safetensors")
    edit(state)
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})


def test_missing_tensor_is_named(ckpt_copy):
    name = "vision_model.encoder.layers.1.mlp.fc2.weight"
    _rewrite(ckpt_copy, lambda s: s.pop(name))
    with pytest.raises(CheckpointError, match=rf"model\.safetensors: tensor '{name}' is missing"):
        encoders.load(str(ckpt_copy))


def test_unexpected_tensor_is_named(ckpt_copy):
    _rewrite(ckpt_copy, lambda s: s.__setitem__("text_model.extra_head.weight", torch.zeros(2, 2)))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unexpected tensor\(s\) 'text_model\.extra_head\.weight'"):
        encoders.load(str(ckpt_copy))


def test_wrong_shape_is_named(ckpt_copy):
    name = "text_model.head.weight"
    _rewrite(ckpt_copy, lambda s: s.__setitem__(name, torch.zeros(7, 32)))
    with pytest.raises(CheckpointError, match=rf"tensor '{name}' has shape \(7, 32\), expected \(32, 32\)"):
        encoders.load(str(ckpt_copy))


def test_unknown_model_type(ckpt_copy):
    config = json.loads((ckpt_copy / "config.json").read_text())
    config["model_type"] = "llama"
    (ckpt_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json: model_type 'llama' cannot be loaded as a dual encoder"):
        encoders.load(str(ckpt_copy))


def test_missing_weights_and_config(ckpt_copy, tmp_path):
    (ckpt_copy / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights found"):
        encoders.load(str(ckpt_copy))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        encoders.load(str(empty))
    with pytest.raises(NotFound, match="no such directory"):
        encoders.load(str(tmp_path / "nope"))


def test_corrupt_weights_file(ckpt_copy):
    (ckpt_copy / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="unreadable safetensors"):
        encoders.load(str(ckpt_copy))


def test_missing_shard_is_named(tiny_siglip_dir, tmp_path):
    from transformers import SiglipModel

    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_siglip_dir, sharded)
    (sharded / "model.safetensors").unlink()
    SiglipModel.from_pretrained(tiny_siglip_dir).save_pretrained(sharded, max_shard_size="40KB")
    victim = sorted(sharded.glob("model-*.safetensors"))[0]
    victim.unlink()
    with pytest.raises(CheckpointError, match=f"shard file\\(s\\) missing: {victim.name}"):
        encoders.load(str(sharded))


def test_missing_tokenizer_file(ckpt_copy):
    (ckpt_copy / "spiece.model").unlink()
    with pytest.raises(CheckpointError, match="needs spiece.model"):
        encoders.load(str(ckpt_copy))


def test_hub_id_resolves_from_local_cache(tiny_siglip_dir, tmp_path, monkeypatch):
    snapshot = tmp_path / "hub" / "models--google--siglip-tiny" / "snapshots" / "abc123"
    shutil.copytree(tiny_siglip_dir, snapshot)
    (tmp_path / "hub" / "models--google--siglip-tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--google--siglip-tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve("google/siglip-tiny") == snapshot
    assert encoders.load("google/siglip-tiny").dim == 32


def test_hub_id_offline_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(NotFound, match=r"not in the local Hugging Face cache .* offline .* pass its directory"):
        encoders.load("google/siglip-base-patch16-224")


def test_dtype_and_device_checked(tiny_siglip_dir):
    with pytest.raises(InvalidInput, match="float16 is for CUDA"):
        encoders.load(str(tiny_siglip_dir), dtype="float16")
    with pytest.raises(InvalidInput, match="unknown dtype"):
        encoders.load(str(tiny_siglip_dir), dtype="int3")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidInput, match="no CUDA GPU"):
            encoders.load(str(tiny_siglip_dir), device="cuda")
