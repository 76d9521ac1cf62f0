"""SigLIP parity with transformers on both checkpoint layouts."""

import numpy as np
import pytest
import torch

import encoders
from images import TEXTS, mixed_batch
from reference import assert_matches_reference, dual_encoder_reference


def reference_features(ckpt_dir, images, texts):
    from transformers import AutoProcessor, SiglipModel

    img, txt, ids, _ = dual_encoder_reference(SiglipModel, AutoProcessor, ckpt_dir, images, texts, padding="max_length")
    return img, txt, ids


@pytest.mark.parametrize("layout", ["current", "legacy"])
def test_siglip_matches_transformers(layout, tiny_siglip_dir, tiny_siglip_legacy_dir):
    ckpt = tiny_siglip_dir if layout == "current" else tiny_siglip_legacy_dir
    images = mixed_batch()
    assert_matches_reference(encoders.load(str(ckpt)), "siglip", 32, images, TEXTS,
                             *reference_features(tiny_siglip_dir, images, TEXTS))


def test_siglip_bf16_close_to_fp32(tiny_siglip_dir):
    images = mixed_batch()
    fp32 = encoders.load(str(tiny_siglip_dir))
    bf16 = encoders.load(str(tiny_siglip_dir), dtype="bfloat16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    for a, b in ((fp32.encode_images(images), bf16.encode_images(images)),
                 (fp32.encode_texts(TEXTS), bf16.encode_texts(TEXTS))):
        assert b.dtype == np.float32
        assert (a * b).sum(axis=1).min() >= 0.99


def test_siglip_batching_does_not_change_results(tiny_siglip_dir):
    enc = encoders.load(str(tiny_siglip_dir))
    images = mixed_batch()
    whole = enc.encode_images(images)
    enc.image_batch = 2
    np.testing.assert_allclose(enc.encode_images(images), whole, atol=1e-5)
    assert enc.encode_images([]).shape == (0, 32)
    assert enc.encode_texts([]).shape == (0, 32)
