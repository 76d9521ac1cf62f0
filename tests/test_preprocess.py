"""The image loader and the preprocessing pipelines."""

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

import encoders
from mmsearch.errors import ImageError, TooLarge
from encoders.preprocess import ImagePreprocessor, load_image
from images import mixed_batch, random_image


def _bytes(image, fmt, **kw):
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("processor_name, config", [
    ("SiglipImageProcessorPil", {"size": {"height": 32, "width": 32}}),
    ("CLIPImageProcessorPil", {"size": {"shortest_edge": 40}, "crop_size": {"height": 36, "width": 36}}),
    ("CLIPImageProcessorPil", {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}}),
    ("BlipImageProcessorPil", {"size": {"height": 48, "width": 48}}),
])
def test_pixels_match_transformers(processor_name, config):
    import transformers

    reference = getattr(transformers, processor_name)(**config)
    ours = ImagePreprocessor.from_config(reference.to_dict())
    images = mixed_batch()
    expected = reference(images=images, return_tensors="pt")["pixel_values"]
    got = ours(images)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert (got - expected).abs().max().item() <= 1e-5


def test_modes_become_rgb():
    rgb = random_image(20, 10)
    cases = {
        "L": rgb.convert("L"),
        "P+transparency": rgb.convert("P"),
        "RGBA": random_image(20, 10, "RGBA"),
        "CMYK": rgb.convert("CMYK"),
        "I;16": Image.fromarray((np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype("<u2")),
    }
    cases["P+transparency"].info["transparency"] = 0
    for label, image in cases.items():
        fmt = "TIFF" if label in ("CMYK", "I;16") else "PNG"
        loaded = load_image(_bytes(image, fmt))
        assert loaded.mode == "RGB" and loaded.size == (20, 10), label
    # 16-bit greyscale scales down instead of clipping to white
    grey16 = load_image(_bytes(cases["I;16"], "TIFF"))
    np.testing.assert_allclose(np.asarray(grey16)[..., 0], np.asarray(rgb.convert("L")), atol=1)


def test_exif_orientation_applied():
    image = random_image(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW when displayed
    loaded = load_image(_bytes(image, "JPEG", exif=exif))
    assert loaded.size == (20, 40)


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    loaded = load_image(buf.getvalue())
    assert loaded.getpixel((8, 8))[0] > 200 and loaded.getpixel((8, 8))[2] < 50


def test_bad_inputs_have_reasons(tmp_path):
    jpeg = _bytes(random_image(64, 64), "JPEG")
    with pytest.raises(ImageError, match="empty image"):
        load_image(b"")
    with pytest.raises(ImageError, match="not an image"):
        load_image(b"hello, I am text")
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(jpeg[: len(jpeg) // 2])
    with pytest.raises(TooLarge, match="exceeds the limit"):
        load_image(_bytes(Image.new("L", (3000, 3000)), "PNG"), max_pixels=1_000_000)
    (tmp_path / "zero.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty file"):
        load_image(tmp_path / "zero.jpg")
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.jpg")
    os.symlink(tmp_path / "gone.jpg", tmp_path / "link.jpg")
    with pytest.raises(ImageError, match="dangling symbolic link"):
        load_image(tmp_path / "link.jpg")
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path)


def _photo(width, height):
    """A large photo-like JPEG: smooth shading plus shapes, as a camera would give."""
    from PIL import ImageDraw

    image = random_image(width, height, seed=7)
    draw = ImageDraw.Draw(image)
    for i in range(12):
        x, y = (i * 997) % width, (i * 613) % height
        draw.ellipse([x, y, x + width // 6, y + height // 6], fill=((i * 40) % 256, 200 - i * 10, 90))
    return _bytes(image, "JPEG", quality=90)


def test_draft_decode_is_faithful(tiny_siglip_dir):
    data = _photo(2400, 1800)
    enc = encoders.load(str(tiny_siglip_dir))
    full = load_image(data)
    draft = load_image(data, draft_size=enc.image_preprocessor.draft_size)
    assert draft.size[0] < full.size[0] // 4  # decoded at a reduced DCT scale
    a, b = enc.encode_images([full]), enc.encode_images([draft])
    assert float((a * b).sum()) >= 0.99
    # at a real model's input size the pixels themselves agree closely
    base = ImagePreprocessor.from_config({"image_processor_type": "SiglipImageProcessor"})
    pa = base([full]).flatten()
    pb = base([load_image(data, draft_size=base.draft_size)]).flatten()
    assert torch.nn.functional.cosine_similarity(pa, pb, dim=0).item() >= 0.99


DRAFT_COSINE = 0.9999  # the floor the README states for draft-decoded JPEG vectors vs transformers' full decode


def test_exact_decode_matches_transformers_and_draft_is_close(tiny_siglip_dir, tmp_path):
    """exact_decode: the JPEG decoded in full, vectors within parity of transformers; the default draft mode:
    not the same numbers, but within the cosine the README states."""
    import pickle

    from transformers import AutoProcessor, SiglipModel

    path = tmp_path / "photo.jpg"
    path.write_bytes(_photo(2400, 1800))
    model = SiglipModel.from_pretrained(tiny_siglip_dir).eval()
    processor = AutoProcessor.from_pretrained(tiny_siglip_dir)
    with torch.no_grad():
        ref = model.get_image_features(**processor(images=[Image.open(path)], return_tensors="pt")).pooler_output
    ref = torch.nn.functional.normalize(ref, dim=-1).numpy()

    exact = encoders.load(str(tiny_siglip_dir), exact_decode=True)
    prep = exact.image_preprocessor
    assert prep.draft_size is None
    assert pickle.loads(pickle.dumps(prep)).draft_size is None  # decode workers get the setting too
    # what the bulk indexer and `mmsearch embed` do with a file: load_image with the preprocessor's draft_size
    vec = exact.encode_images([load_image(path, draft_size=prep.draft_size)])
    assert np.abs(vec - ref).max() <= 1e-4

    draft = encoders.load(str(tiny_siglip_dir))
    assert draft.image_preprocessor.draft_size is not None
    vec = draft.encode_images([load_image(path, draft_size=draft.image_preprocessor.draft_size)])
    assert not np.array_equal(vec, ref) and np.abs(vec - ref).max() > 1e-4
    assert float((vec * ref).sum()) >= DRAFT_COSINE
