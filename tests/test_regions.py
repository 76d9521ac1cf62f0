"""Where a text matched in each hit (GroupViT collections): masks and boxes from the same segmentation
logits transformers' GroupViT computes, mapped back to the image's own pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import encoders
from encoders.preprocess import ImagePreprocessor, load_image
from indexer.store import Store
from mmsearch.errors import InvalidInput
from search.models import Models
from search.pipeline import Query, Searcher
from search.regions import region_mask
from search_helpers import populate


@pytest.fixture(scope="module")
def groupvit_dir(tmp_path_factory):
    from tiny_groupvit import make_tiny_groupvit

    return make_tiny_groupvit(tmp_path_factory.mktemp("gv"))[0]


def reference_logits(ckpt_dir, image, text) -> np.ndarray:
    from transformers import CLIPProcessor, GroupViTModel

    model = GroupViTModel.from_pretrained(ckpt_dir).eval()
    inputs = CLIPProcessor.from_pretrained(ckpt_dir)(text=[text], images=[image], padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs, output_segmentation=True).segmentation_logits.numpy()[0, 0]


def test_input_view_maps_the_model_crop_back_to_the_image():
    clip_like = ImagePreprocessor(size={"shortest_edge": 20}, do_center_crop=True, crop_size={"height": 20, "width": 20})
    assert clip_like.input_view(300, 200) == pytest.approx((50.0, 0.0, 250.0, 200.0))  # wide: sides cut
    assert clip_like.input_view(100, 400) == pytest.approx((0.0, 150.0, 100.0, 250.0))  # tall: top and bottom cut
    square = ImagePreprocessor(size={"height": 32, "width": 32})
    assert square.input_view(300, 200) == (0.0, 0.0, 300.0, 200.0)  # squashed, nothing cut


def test_regions_match_transformers_segmentation(tmp_path, groupvit_dir):
    store = Store.open(tmp_path / "data")
    models = Models(batching=False)
    try:
        enc = models.dual(str(groupvit_dir))
        populate(store, "gv", enc, tmp_path / "images", n=6)
        text = "a red circle"
        result = Searcher(store, models).search(Query(collection="gv", text=text, top_k=6, include_regions=True))
        assert len(result.hits) == 6 and result.timing["regions_ms"] > 0
        for hit in result.hits:
            image = load_image(hit.uri)
            want = region_mask(reference_logits(groupvit_dir, image, text))
            got = np.asarray(Image.open(io.BytesIO(hit.region.mask_png))).astype(bool)
            assert got.shape == want.shape and (got == want).mean() >= 0.99
            left, top, right, bottom = hit.region.view
            assert (left, top, right, bottom) == pytest.approx(enc.image_preprocessor.input_view(*image.size))
            ys, xs = np.nonzero(want)
            sx, sy = (right - left) / want.shape[1], (bottom - top) / want.shape[0]
            expected = (left + xs.min() * sx, top + ys.min() * sy, left + (xs.max() + 1) * sx, top + (ys.max() + 1) * sy)
            assert np.allclose(hit.region.box, expected, atol=1.5)
            assert 0 < hit.region.coverage <= 1
    finally:
        models.close()
        store.close()


def test_regions_need_a_groupvit_collection_and_a_text(tmp_path, groupvit_dir, tiny_siglip_dir):
    store = Store.open(tmp_path / "data")
    models = Models(batching=False)
    try:
        populate(store, "sig", models.dual(str(tiny_siglip_dir)), tmp_path / "a", n=3)
        ids = populate(store, "gv", models.dual(str(groupvit_dir)), tmp_path / "b", n=3)
        searcher = Searcher(store, models)
        with pytest.raises(InvalidInput, match="needs a GroupViT collection"):
            searcher.search(Query(collection="sig", text="x", include_regions=True))
        with pytest.raises(InvalidInput, match="needs a text query"):
            searcher.search(Query(collection="gv", item_id=ids[0], include_regions=True))
    finally:
        models.close()
        store.close()


def test_regions_over_grpc(tmp_path, groupvit_dir):
    from search.client import SearchClient
    from search.config import ServerConfig
    from search.server import start
    from search_helpers import png_bytes

    srv = start(ServerConfig(address="127.0.0.1:0", data_dir=str(tmp_path / "d"), health_grace_s=0,
                             preload=[str(groupvit_dir)]))
    try:
        with SearchClient(f"127.0.0.1:{srv.port}", retries=0) as c:
            c.create_collection("gv", model=str(groupvit_dir))
            c.upsert("gv", [{"image": png_bytes(i, 60, 40), "uri": f"u{i}"} for i in range(3)])
            hits = c.search("gv", text="a red circle", top_k=3, include_regions=True).hits
            assert len(hits) == 3
            for h in hits:
                mask = Image.open(io.BytesIO(h.region.mask_png))
                assert mask.mode == "1" and 0 <= h.region.x0 < h.region.x1 <= 60 and 0 <= h.region.y0 < h.region.y1 <= 40
                assert h.region.view_right > h.region.view_left and 0 < h.region.coverage <= 1
            assert not c.search("gv", text="x", top_k=1).hits[0].HasField("region")
    finally:
        srv.stop(0)
