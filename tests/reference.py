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
