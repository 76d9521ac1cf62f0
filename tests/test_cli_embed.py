"""`mmsearch embed`: vectors on stdout, one clear line and an exit code on bad input."""

import json
import subprocess
import sys

import numpy as np

import encoders
from images import random_image


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "search.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_embed_json_matches_library(tiny_siglip_dir, tmp_path):
    image_path = tmp_path / "x.png"
    random_image(50, 40).save(image_path)
    proc = run_cli("embed", "--model", str(tiny_siglip_dir), "--text", "a red circle", "--image", str(image_path), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["family"] == "siglip" and out["dim"] == 32
    enc = encoders.load(str(tiny_siglip_dir))
    text_vec = np.array(out["vectors"][0]["vector"], dtype=np.float32)
    np.testing.assert_allclose(text_vec, enc.encode_texts(["a red circle"])[0], atol=1e-6)
    from encoders.preprocess import load_image
    np.testing.assert_allclose(np.array(out["vectors"][1]["vector"]), enc.encode_images([load_image(image_path)])[0], atol=1e-6)


def test_embed_errors_are_one_line(tiny_siglip_dir, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    proc = run_cli("embed", "--model", str(tiny_siglip_dir), "--image", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "not an image" in proc.stderr
    proc = run_cli("embed", "--model", str(tmp_path / "nowhere"), "--text", "x")
    assert proc.returncode == 3 and "no such directory" in proc.stderr
    proc = run_cli("embed", "--model", str(tiny_siglip_dir))
    assert proc.returncode == 2 and "at least one --text or --image" in proc.stderr


def test_embed_exact_decode(tiny_siglip_dir, tmp_path):
    """JPEGs decode as the indexer decodes them (draft mode) unless --exact-decode asks for the full decode."""
    from encoders.preprocess import load_image

    path = tmp_path / "big.jpg"
    random_image(1600, 1200, seed=3).save(path, quality=90)
    enc = encoders.load(str(tiny_siglip_dir))
    draft = enc.encode_images([load_image(path, draft_size=enc.image_preprocessor.draft_size)])[0]
    full = enc.encode_images([load_image(path)])[0]
    assert np.abs(draft - full).max() > 1e-4
    for flags, want in (((), draft), (("--exact-decode",), full)):
        proc = run_cli("embed", "--model", str(tiny_siglip_dir), "--image", str(path), "--json", *flags)
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_allclose(np.array(json.loads(proc.stdout)["vectors"][0]["vector"]), want, atol=1e-6)
