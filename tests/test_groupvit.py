"""GroupViT parity with transformers on both checkpoint layouts: features, token ids, segmentation maps."""

import json
import shutil

import numpy as np
import pytest
import torch

import encoders
from encoders.groupvit import segment
from mmsearch.errors import InvalidInput
from images import TEXTS, mixed_batch, random_image
from reference import assert_matches_reference, dual_encoder_reference

MORE_TEXTS = TEXTS + ["don't STOP: it's 12345", "  spaces\tand\nnewlines  ", "中英mixed 文本 text"]
LABELS = ["a red circle", "two blue squares", "a green triangle", "一只猫"]


@pytest.fixture(scope="module")
def groupvit_dirs(tmp_path_factory):
    from tiny_groupvit import make_groupvit_pair

    return make_groupvit_pair(tmp_path_factory)


def reference(ckpt_dir, images, texts):
    from transformers import CLIPProcessor, GroupViTModel

    return dual_encoder_reference(GroupViTModel, CLIPProcessor, ckpt_dir, images, texts)


def reference_segmentation(ckpt_dir, images, texts):
    from transformers import CLIPProcessor, GroupViTModel

    model = GroupViTModel.from_pretrained(ckpt_dir).eval()
    processor = CLIPProcessor.from_pretrained(ckpt_dir)
    inputs = processor(text=texts, images=images, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs, output_segmentation=True).segmentation_logits.numpy()


@pytest.mark.parametrize("layout", ["current", "legacy"])
def test_groupvit_matches_transformers(layout, groupvit_dirs):
    current, legacy = groupvit_dirs
    ckpt = current if layout == "current" else legacy
    images = mixed_batch()
    assert_matches_reference(encoders.load(str(ckpt)), "groupvit", 16, images, MORE_TEXTS,
                             *reference(ckpt, images, MORE_TEXTS))


@pytest.mark.parametrize("layout", ["current", "legacy"])
def test_groupvit_segmentation_matches_transformers(layout, groupvit_dirs):
    current, legacy = groupvit_dirs
    ckpt = current if layout == "current" else legacy
    images = mixed_batch()
    ref = reference_segmentation(ckpt, images, LABELS)
    enc = encoders.load(str(ckpt))
    logits = enc.segmentation_logits(images, LABELS)
    assert logits.shape == ref.shape == (len(images), len(LABELS), 32, 32)
    assert np.abs(logits - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    for i, image in enumerate(images):
        labels = enc.segment(image, LABELS)
        assert labels.shape == (32, 32) and labels.dtype.kind == "i"
        np.testing.assert_array_equal(labels, ref[i].argmax(axis=0))
        np.testing.assert_array_equal(segment(enc, image, LABELS), labels)
    # a random model still splits an image into several regions: the map is not one constant label
    assert any(len(np.unique(enc.segment(im, LABELS))) > 1 for im in images)


def test_groupvit_segment_refuses_bad_input(groupvit_dirs):
    enc = encoders.load(str(groupvit_dirs[0]))
    with pytest.raises(InvalidInput, match="at least one text"):
        enc.segment(random_image(40, 40), [])
    siglip_like = object()
    with pytest.raises(InvalidInput, match="GroupViT"):
        segment(siglip_like, random_image(40, 40), LABELS)


def test_groupvit_old_eos_config_pools_at_largest_id(groupvit_dirs, tmp_path):
    """Configs written before transformers#24773 say eos_token_id=2; pooling is then at argmax(input_ids)."""
    current, _ = groupvit_dirs
    copy = tmp_path / "old_eos"
    shutil.copytree(current, copy)
    config = json.loads((copy / "config.json").read_text())
    config["text_config"]["eos_token_id"] = 2
    (copy / "config.json").write_text(json.dumps(config))
    _, ref_txt, _, _ = reference(copy, mixed_batch()[:1], MORE_TEXTS)
    txt = encoders.load(str(copy)).encode_texts(MORE_TEXTS)
    assert np.abs(txt - ref_txt).max() <= 1e-4


def test_groupvit_bf16_close_to_fp32(groupvit_dirs):
    current, _ = groupvit_dirs
    images = mixed_batch()
    fp32 = encoders.load(str(current))
    bf16 = encoders.load(str(current), dtype="bfloat16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    for a, b in ((fp32.encode_images(images), bf16.encode_images(images)),
                 (fp32.encode_texts(MORE_TEXTS), bf16.encode_texts(MORE_TEXTS))):
        assert b.dtype == np.float32
        assert (a * b).sum(axis=1).min() >= 0.98
    assert bf16.segment(images[0], LABELS).shape == (32, 32)


def test_groupvit_batching_does_not_change_results(groupvit_dirs):
    enc = encoders.load(str(groupvit_dirs[0]))
    images = mixed_batch()
    whole = enc.encode_images(images)
    enc.image_batch = 2
    np.testing.assert_allclose(enc.encode_images(images), whole, atol=1e-5)
    np.testing.assert_allclose(np.concatenate([enc.encode_texts([t]) for t in MORE_TEXTS]), enc.encode_texts(MORE_TEXTS),
                               atol=1e-5)
    assert enc.encode_images([]).shape == (0, 16) and enc.encode_texts([]).shape == (0, 16)
