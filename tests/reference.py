"""What transformers (the reference implementation) computes for a dual-encoder checkpoint."""

from __future__ import annotations

import torch


def dual_encoder_reference(model_cls, processor_cls, ckpt_dir, images, texts, padding="longest"):
    """Normalised image and text features, the token ids and the pixel values, from the checkpoint's own
    processor and model class (`padding="max_length"` for models trained on fixed-length text)."""
    model = model_cls.from_pretrained(ckpt_dir).eval()
    processor = processor_cls.from_pretrained(ckpt_dir)
    with torch.no_grad():
        pix = processor(images=images, return_tensors="pt")
        img = model.get_image_features(**pix).pooler_output
        tok = processor(text=texts, padding=padding, truncation=True, return_tensors="pt")
        txt = model.get_text_features(**tok).pooler_output
    norm = lambda t: (t / t.norm(dim=-1, keepdim=True)).numpy()
    return norm(img), norm(txt), tok["input_ids"].numpy(), pix["pixel_values"]


def assert_matches_reference(enc, family: str, dim: int, images, texts, ref_img, ref_txt, ref_ids, ref_pix=None):
    """A dual encoder loaded by encoders.load against transformers' numbers for the same checkpoint: family and
    dim, identical token ids, the same pixels (when given), unit-norm float32 features within 1e-4."""
    import numpy as np

    assert (enc.family, enc.dim) == (family, dim)
    np.testing.assert_array_equal(enc.tokenizer(texts).input_ids.numpy(), ref_ids)
    if ref_pix is not None:
        np.testing.assert_allclose(enc.image_preprocessor(images).numpy(), ref_pix.numpy(), atol=1e-6)
    img, txt = enc.encode_images(images), enc.encode_texts(texts)
    assert img.dtype == np.float32 and img.shape == (len(images), dim)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)
    assert np.abs(img - ref_img).max() <= 1e-4
    assert np.abs(txt - ref_txt).max() <= 1e-4
