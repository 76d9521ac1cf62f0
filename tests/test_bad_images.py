"""Every kind of bad or unusual input in a bulk job: recorded with its reason and skipped, or decoded right."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image, ImageOps

import encoders
from images import random_image
from indexer.catalog import Item
from indexer.jobs import JobOptions, index_paths
from indexer.store import Store


@pytest.fixture(scope="module")
def enc(tiny_siglip_dir):
    return encoders.load(tiny_siglip_dir)


def jpeg_bytes(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def make_inputs(root) -> tuple[dict[str, str], dict[str, Image.Image]]:
    """(bad file -> expected reason fragment, good file -> the image it must be indexed as)."""
    root.mkdir()
    bad, good = {}, {}
    whole = jpeg_bytes(random_image(80, 60, seed=1))
    (root / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    bad["truncated.jpg"] = "corrupt or truncated"
    buf = io.BytesIO()
    random_image(64, 64, seed=6).save(buf, format="PNG")
    png = bytearray(buf.getvalue())
    png[len(png) // 2: len(png) // 2 + 64] = bytes(64)  # damage the compressed pixel data
    (root / "corrupt.png").write_bytes(bytes(png))
    bad["corrupt.png"] = "corrupt or truncated"
    (root / "empty.jpg").write_bytes(b"")
    bad["empty.jpg"] = "empty"
    (root / "letter.jpg").write_text("Dear reader, this is not a picture.")
    bad["letter.jpg"] = "not an image"
    Image.new("L", (1500, 1000), 0).save(root / "bomb.png")  # 1.5 MP, over the job's 1 MP limit below
    bad["bomb.png"] = "exceeds the limit"
    os.symlink(root / "gone.png", root / "dangling.png")
    bad["dangling.png"] = "dangling symbolic link"

    frames = [Image.new("RGB", (40, 30), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    good["animated.gif"] = Image.open(root / "animated.gif").convert("RGB")  # frame 0
    cmyk = random_image(48, 40, seed=2).convert("CMYK")
    cmyk.save(root / "cmyk.jpg", quality=95)
    good["cmyk.jpg"] = Image.open(root / "cmyk.jpg").convert("RGB")
    values = (np.arange(50 * 40, dtype=np.uint16).reshape(40, 50) * 30).astype("<u2")
    sixteen = Image.frombytes("I;16", (50, 40), values.tobytes())
    sixteen.save(root / "sixteen.png")
    arr16 = np.asarray(Image.open(root / "sixteen.png"), dtype=np.uint16)
    good["sixteen.png"] = Image.fromarray((arr16 >> 8).astype(np.uint8), "L").convert("RGB")
    pal = random_image(36, 36, seed=3).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(root / "palette.png", transparency=0)
    rgba = Image.open(root / "palette.png").convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    good["palette.png"] = Image.alpha_composite(white, rgba).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    (root / "rotated.jpg").write_bytes(jpeg_bytes(random_image(60, 40, seed=4), exif=exif.tobytes()))
    good["rotated.jpg"] = ImageOps.exif_transpose(Image.open(root / "rotated.jpg")).convert("RGB")
    random_image(30, 30, seed=5).save(root / "plain.png")
    good["plain.png"] = Image.open(root / "plain.png").convert("RGB")
    return bad, good


@pytest.mark.parametrize("workers", [0, 1])
def test_each_bad_input_is_recorded_and_the_job_goes_on(enc, tmp_path, workers):
    bad, good = make_inputs(tmp_path / "in")
    with Store(tmp_path / "data") as store:
        result = index_paths(store, "c", enc, [str(tmp_path / "in")],
                             JobOptions(workers=workers, max_pixels=1_000_000, commit_every=4))
        assert (result.state, result.added, result.failed) == ("done", len(good), len(bad))
        errors = {os.path.basename(e.uri): e.reason for e in store.catalog.job_errors(result.job_id)}
        assert set(errors) == set(bad)
        for name, fragment in bad.items():
            assert fragment in errors[name], (name, errors[name])
        coll = store.collection("c")
        rows = {os.path.basename(r.uri): r for r in coll.get(store.catalog.select_ids(coll.id)).values()}
        assert set(rows) == set(good)
        want = enc.encode_images(list(good.values()))
        for (name, image), vec in zip(good.items(), want):
            np.testing.assert_allclose(rows[name].vector_array(), vec, atol=1e-5, err_msg=name)
            assert (rows[name].width, rows[name].height) == image.size, name
        assert (rows["rotated.jpg"].width, rows["rotated.jpg"].height) == (40, 60)
        job = store.catalog.get_job(result.job_id)
        assert (job.failed, job.added, job.state) == (len(bad), len(good), "done")


def test_unreadable_inputs(enc, tmp_path):
    (tmp_path / "dir.jpg").mkdir()
    random_image(20, 20, seed=1).save(tmp_path / "ok.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text("uri\ndir.jpg\nmissing.png\nok.png\n")
    with Store(tmp_path / "data") as store:
        r = index_paths(store, "c", enc, [str(manifest)], JobOptions(workers=0))
        reasons = sorted(e.reason for e in store.catalog.job_errors(r.job_id))
        assert r.added == 1 and reasons == ["no such file", "not a regular file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_permission_denied(enc, tmp_path):
    (tmp_path / "in").mkdir()
    locked = tmp_path / "in" / "locked.png"
    random_image(20, 20, seed=1).save(locked)
    os.chmod(locked, 0)
    random_image(20, 20, seed=2).save(tmp_path / "in" / "ok.png")
    with Store(tmp_path / "data") as store:
        r = index_paths(store, "c", enc, [str(tmp_path / "in")], JobOptions(workers=1))
        [err] = store.catalog.job_errors(r.job_id)
        assert r.added == 1 and "permission denied" in err.reason.lower()
        assert not store.catalog.select_ids(store.collection("c").id, Item.uri == str(locked)).size
