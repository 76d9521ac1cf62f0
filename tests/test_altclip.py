"""AltCLIP parity with transformers on both checkpoint layouts (incl. Chinese text)."""

import json

import numpy as np
import pytest
import torch

import encoders
from images import TEXTS, mixed_batch
from reference import assert_matches_reference, dual_encoder_reference

MORE_TEXTS = TEXTS + ["中文和English混合的查询 query", "  spaces\tand\nnewlines  ", "<mask> token <s> inside"]


@pytest.fixture(scope="module")
def altclip_dirs(tmp_path_factory):
    from tiny_altclip import make_altclip_pair

    return make_altclip_pair(tmp_path_factory)


def reference(ckpt_dir, images, texts):
    from transformers import AltCLIPModel, AltCLIPProcessor

    return dual_encoder_reference(AltCLIPModel, AltCLIPProcessor, ckpt_dir, images, texts)


@pytest.mark.parametrize("layout", ["current", "legacy"])
def test_altclip_matches_transformers(layout, altclip_dirs):
    current, legacy = altclip_dirs
    ckpt = current if layout == "current" else legacy
    images = mixed_batch()
    assert_matches_reference(encoders.load(str(ckpt)), "altclip", 16, images, MORE_TEXTS,
                             *reference(ckpt, images, MORE_TEXTS))


def test_altclip_legacy_tokenizer_honours_mask_lstrip(altclip_dirs, tmp_path):
    """Real XLM-R snapshots declare <mask> with lstrip=True in special_tokens_map.json."""
    import shutil

    from transformers import AutoTokenizer

    from encoders.tokenize import load_tokenizer

    _, legacy = altclip_dirs
    copy = tmp_path / "ckpt"
    shutil.copytree(legacy, copy)
    specials = json.loads((copy / "special_tokens_map.json").read_text())
    specials["mask_token"] = {"content": "<mask>", "lstrip": True, "normalized": False, "rstrip": False,
                              "single_word": False}
    (copy / "special_tokens_map.json").write_text(json.dumps(specials))
    texts = ["a cat <mask> on a mat", "猫 <mask>", "<mask>"]
    ref = AutoTokenizer.from_pretrained(copy)(texts)["input_ids"]
    ours = load_tokenizer(copy, default_max_length=20)
    assert [ours.encode(t) for t in texts] == ref


def test_altclip_bf16_close_to_fp32(altclip_dirs):
    current, _ = altclip_dirs
    images = mixed_batch()
    fp32 = encoders.load(str(current))
    bf16 = encoders.load(str(current), dtype="bfloat16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    for a, b in ((fp32.encode_images(images), bf16.encode_images(images)),
                 (fp32.encode_texts(MORE_TEXTS), bf16.encode_texts(MORE_TEXTS))):
        assert b.dtype == np.float32
        assert (a * b).sum(axis=1).min() >= 0.99


def test_altclip_batching_and_padding_do_not_change_results(altclip_dirs):
    current, _ = altclip_dirs
    enc = encoders.load(str(current))
    whole = enc.encode_texts(MORE_TEXTS)
    one_by_one = np.concatenate([enc.encode_texts([t]) for t in MORE_TEXTS])
    np.testing.assert_allclose(one_by_one, whole, atol=1e-5)
    assert enc.encode_images([]).shape == (0, 16) and enc.encode_texts([]).shape == (0, 16)


def test_altclip_missing_tensor_is_named(altclip_dirs, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    current, _ = altclip_dirs
    copy = tmp_path / "broken"
    shutil.copytree(current, copy)
    state = load_file(copy / "model.safetensors")
    del state["text_model.pre_LN.weight"]
    save_file(state, copy / "model.safetensors")
    with pytest.raises(encoders.CheckpointError, match="text_model.pre_LN.weight"):
        encoders.load(str(copy))
