"""The search page in a real browser (headless Chromium driven by selenium) against a server on a small demo
collection (600 synthetic photos with ground-truth labels, the shipped demo model), with a bearer token so
the page's token prompt and signed thumbnail URLs are used throughout.

Fails (never skips) when Chromium cannot be started: .ci/run installs Debian's chromium and chromium-driver."""

from __future__ import annotations

import csv
import json
import re
import time
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlparse

import pytest
import requests

from browser import chromium, console_errors
from search.config import ServerConfig
from search.demo import run as demo
from search.demo import shapes
from search.server import start

TOKEN = "page-token"
N_IMAGES = 600
WAIT = 30


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_blip_dirs):
    data = tmp_path_factory.mktemp("web") / "data"
    manifest = demo.build_collection(data, N_IMAGES, workers=0)
    srv = start(ServerConfig(address="", http="127.0.0.1:0", data_dir=str(data), token=TOKEN, health_grace_s=0,
                             preload=[str(demo.MODEL_DIR)], image_roots=[str(data / demo.PHOTOS)],
                             allow_models=[str(tiny_blip_dirs[0])]))
    srv.base = f"http://127.0.0.1:{srv.http_port}"
    srv.labels = shapes.read_labels(manifest)
    srv.itm = str(tiny_blip_dirs[0])
    yield srv
    srv.stop(1)


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(tmp_path_factory, site, downloads):
    with chromium(tmp_path_factory.mktemp("chromium")) as driver:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        driver.get(page_url(site, q="a red circle"))
        # the API answers 401, so the page asks for the token (kept for the tab in sessionStorage)
        wait(driver, lambda d: d.find_element("id", "token-dialog").get_attribute("open") is not None)
        driver.find_element("id", "token").send_keys(TOKEN + "\n")
        wait_results(driver)
        console_errors(driver)  # the two 401s that made the page ask
        yield driver


def page_url(site, **params) -> str:
    return f"{site.base}/?" + urlencode({"collection": demo.COLLECTION, **params})


def wait(driver, condition, timeout: float = WAIT):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)


CARDS = """return [...document.querySelectorAll('#grid .card')].map(c => {
  const img = c.querySelector('img');
  return {id: Number(c.dataset.id), uri: c.dataset.uri, score: Number(c.dataset.score),
          loaded: img.complete && img.naturalWidth > 0, src: img.currentSrc || img.src,
          itm: (c.querySelector('.itm') || {}).textContent || null};
});"""


def cards(driver) -> list[dict]:
    return driver.execute_script(CARDS)


def wait_results(driver, at_least: int = 20, loaded: int = 20, previous: list[int] | None = None) -> list[dict]:
    """Wait until the grid shows `at_least` cards, the first `loaded` thumbnails painted, and (when given) ids
    other than `previous`."""
    def ready(d):
        shown = cards(d)
        if len(shown) < at_least or not all(c["loaded"] for c in shown[:loaded]):
            return False
        if previous is not None and [c["id"] for c in shown] == previous:
            return False
        return shown
    return wait(driver, ready)


def settled(driver, quiet_s: float = 1.0) -> list[dict]:
    """The cards once their number has not changed for `quiet_s` (no page is still arriving)."""
    shown, since = cards(driver), time.monotonic()
    while time.monotonic() - since < quiet_s:
        time.sleep(0.1)
        now = cards(driver)
        if len(now) != len(shown):
            shown, since = now, time.monotonic()
    return shown


def search(driver, text: str) -> None:
    box = driver.find_element("id", "q")
    box.clear()
    box.send_keys(text + "\n")


def name_of(card: dict) -> str:
    return Path(card["uri"]).name


def api(site, path: str, **body) -> dict:
    r = requests.post(site.base + path, json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    r.raise_for_status()
    return r.json()


def test_a_text_query_shows_thumbnails_whose_labels_match(browser, site, tmp_path_factory):
    browser.get(page_url(site, q="a red circle"))
    shown = wait_results(browser)
    query = next(q for q in shapes.QUERIES if q.text == "a red circle")
    matching = [c for c in shown[:20] if query.relevant(site.labels[name_of(c)])]
    assert len(matching) >= 10, [site.labels[name_of(c)].describe() for c in shown[:20]]
    assert [c["score"] for c in shown] == sorted((c["score"] for c in shown), reverse=True)
    # thumbnails only (signed URLs an <img> can load without the token header); no original was fetched
    assert all("/thumbnail?v=" in c["src"] and "&sig=" in c["src"] for c in shown)
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert not [u for u in fetched if "/image?" in u], "the page loaded originals nobody opened"
    status = browser.find_element("id", "status").text
    assert re.match(r"\d+ results", status) and "encode" in status, status
    shot = Path(tmp_path_factory.getbasetemp()) / "page.png"
    browser.save_screenshot(str(shot))
    print(f"screenshot of the page: {shot}")
    assert shot.stat().st_size > 10_000
    assert not console_errors(browser)


def test_enter_searches_puts_the_query_in_the_url_and_it_survives_a_reload(browser, site):
    browser.get(page_url(site, q="a red circle"))
    before = [c["id"] for c in wait_results(browser)][:40]
    search(browser, "two blue squares")
    after = [c["id"] for c in wait_results(browser, previous=before)][:40]
    assert parse_qs(urlparse(browser.current_url).query)["q"] == ["two blue squares"]
    want = api(site, f"/api/v1/collections/{demo.COLLECTION}/search", text="two blue squares", top_k=40)
    assert after == [h["id"] for h in want["hits"]]
    browser.refresh()
    wait(browser, lambda d: d.find_element("id", "q").get_attribute("value") == "two blue squares")
    assert [c["id"] for c in wait_results(browser)][:40] == after
    browser.back()  # history: the previous query comes back
    assert [c["id"] for c in wait_results(browser, previous=after)][:40] == before[:40]


def test_more_like_this(browser, site):
    browser.get(page_url(site, q="a green triangle"))
    before = wait_results(browser)
    first = before[0]
    browser.execute_script("document.querySelector('#grid .card .like').click()")
    shown = wait_results(browser, previous=[c["id"] for c in before])
    assert parse_qs(urlparse(browser.current_url).query)["like"] == [str(first["id"])]
    want = api(site, f"/api/v1/collections/{demo.COLLECTION}/search", item_id=first["id"], top_k=40)
    assert [c["id"] for c in shown][:40] == [h["id"] for h in want["hits"]]
    assert first["id"] not in [c["id"] for c in shown]
    chip = browser.find_element("id", "chip")
    assert chip.is_displayed() and f"like #{first['id']}" in chip.text
    browser.refresh()  # "more like this" is in the URL too
    assert [c["id"] for c in wait_results(browser)][:40] == [c["id"] for c in shown][:40]


def test_a_bad_filter_shows_its_error_at_the_column(browser, site):
    from search.filters import FilterError, parse

    bad = 'meta.colour = "red" AND AND'
    with pytest.raises(FilterError) as info:
        parse(bad)
    column = int(str(info.value).split("column ")[1].split()[0])
    browser.get(page_url(site, q="a red circle"))
    wait_results(browser)
    box = browser.find_element("id", "filter")
    box.clear()
    box.send_keys(bad + "\n")
    error = wait(browser, lambda d: d.find_element("id", "filter-error").is_displayed()
                 and d.find_element("id", "filter-error"))
    assert f"bad filter at column {column}" in error.text
    caret = browser.find_element("id", "filter-caret").text.split("\n")
    assert caret[0] == bad and caret[1] == " " * (column - 1) + "^", caret
    assert box.get_attribute("aria-invalid") == "true" and cards(browser) == []
    assert parse_qs(urlparse(browser.current_url).query)["filter"] == [bad]
    box.clear()
    box.send_keys('meta.colour = "red"\n')  # fixed: the error goes, the results come back
    shown = wait_results(browser, at_least=10, loaded=10)
    assert not browser.find_element("id", "filter-error").is_displayed()
    assert all(site.labels[name_of(c)].colour == "red" for c in shown)


def test_min_score_cuts_the_grid(browser, site):
    browser.get(page_url(site, q="a yellow star"))
    cut = wait_results(browser)[7]["score"]
    browser.get(page_url(site, q="a yellow star", k=20, min_score=f"{cut:.6f}"))
    want = api(site, f"/api/v1/collections/{demo.COLLECTION}/search", text="a yellow star", top_k=100,
               min_score=float(f"{cut:.6f}"))
    assert 8 <= len(want["hits"]) < 100
    wait(browser, lambda d: [c["id"] for c in cards(d)] == [h["id"] for h in want["hits"]])
    assert all(c["score"] >= cut - 1e-6 for c in cards(browser))
    assert browser.find_element("id", "min-score").get_attribute("value") == f"{cut:.6f}"
    assert browser.find_element("id", "page-size").get_attribute("value") == "20"


def test_keywords_fuse_with_the_query_and_alone_find_the_file(browser, site):
    path = f"/api/v1/collections/{demo.COLLECTION}/search"
    target = api(site, path, text="a blue star", top_k=200)["hits"][150]  # far down the vector list
    word = Path(target["uri"]).stem.split("_")[-1]  # img_00123.png: the file name's number is a keyword
    browser.get(page_url(site, q="a blue star", k=20))
    before = [c["id"] for c in wait_results(browser)]
    assert target["id"] not in before
    box = browser.find_element("id", "keywords")
    box.clear()
    box.send_keys(word + "\n")
    want = api(site, path, text="a blue star", keywords=word, top_k=20)
    assert want["score_kind"] == "rrf" and target["id"] in [h["id"] for h in want["hits"]]
    wait(browser, lambda d: [c["id"] for c in cards(d)][:20] == [h["id"] for h in want["hits"]])
    assert parse_qs(urlparse(browser.current_url).query)["keywords"] == [word]
    assert "fusion" in browser.find_element("css selector", "#grid .card .score").get_attribute("title")

    browser.get(page_url(site, keywords=word))  # keywords alone are a query too, and survive in the URL
    wait(browser, lambda d: [c["id"] for c in cards(d)] == [target["id"]])
    assert browser.find_element("id", "keywords").get_attribute("value") == word
    browser.find_element("css selector", "#grid .card .thumb").click()
    viewer = wait(browser, lambda d: d.find_element("id", "viewer").get_attribute("open") is not None
                  and d.find_element("id", "viewer"))
    assert "score (keyword)" in viewer.text and "keyword score" in viewer.text
    browser.switch_to.active_element.send_keys("\ue00c")  # Escape
    wait(browser, lambda d: d.find_element("id", "viewer").get_attribute("open") is None)

    browser.get(page_url(site, keywords="nosuchword"))
    wait(browser, lambda d: "the keywords" in d.find_element("id", "empty").text)


def test_the_grid_pages_on_scroll(browser, site):
    browser.get(page_url(site, q="a blue triangle", k=20))
    wait_results(browser)
    for _ in range(20):
        if len(cards(browser)) >= 80:
            break
        browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
        time.sleep(0.2)
    shown = wait(browser, lambda d: len(cards(d)) >= 80 and cards(d))
    ids = [c["id"] for c in shown]
    want = api(site, f"/api/v1/collections/{demo.COLLECTION}/search", text="a blue triangle", top_k=len(ids))
    assert len(ids) == len(set(ids)) and ids == [h["id"] for h in want["hits"]]  # pages joined = one list
    pages = browser.execute_script("return performance.getEntriesByType('resource')"
                                   ".filter(e => e.initiatorType === 'fetch' && e.name.endsWith('/search')).length")
    assert pages >= len(ids) // 20  # asked a page of 20 at a time, not everything again
    lazy = browser.execute_script("return [...document.querySelectorAll('#grid img')].map(i => i.loading)")
    assert lazy[:24] == ["eager"] * 24 and set(lazy[24:]) == {"lazy"}


def test_an_uploaded_image_finds_itself(browser, site):
    browser.get(page_url(site, q="a red circle"))
    before = [c["id"] for c in wait_results(browser)]
    name = sorted(site.labels)[17]
    path = Path(site.store.data_dir) / demo.PHOTOS / name
    upload = browser.find_element("id", "upload")
    browser.execute_script("arguments[0].hidden = false", upload)  # a real file chooser cannot be driven
    upload.send_keys(str(path))
    shown = wait_results(browser, previous=before)
    assert name_of(shown[0]) == name and shown[0]["score"] > 0.99
    assert browser.find_element("id", "chip").is_displayed()
    assert parse_qs(urlparse(browser.current_url).query)["image"] == ["1"]
    browser.refresh()  # the image is kept for the tab, so a reload asks again
    assert name_of(wait_results(browser)[0]) == name


def test_a_click_opens_the_original_large_with_its_metadata(browser, site):
    from selenium.webdriver.common.keys import Keys

    browser.get(page_url(site, q="an orange cross"))
    shown = wait_results(browser)
    browser.find_elements("css selector", "#grid .card .thumb")[1].click()
    viewer = wait(browser, lambda d: d.find_element("id", "viewer").get_attribute("open") is not None
                  and d.find_element("id", "viewer"))
    wait(browser, lambda d: "/image?" in d.find_element("id", "viewer-img").get_attribute("src")
         and d.execute_script("return document.getElementById('viewer-img').naturalWidth") > 0)
    label = site.labels[name_of(shown[1])]
    text = viewer.text
    assert name_of(shown[1]) in text and f"meta.colour\n{label.colour}" in text and f"meta.shape\n{label.shape}" in text
    natural = browser.execute_script("const i = document.getElementById('viewer-img'); return [i.naturalWidth, i.naturalHeight]")
    assert natural == [label.width, label.height]  # the original's own size, not the thumbnail's
    browser.switch_to.active_element.send_keys(Keys.ARROW_RIGHT)
    wait(browser, lambda d: name_of(shown[2]) in d.find_element("id", "viewer-title").text)
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    wait(browser, lambda d: d.find_element("id", "viewer").get_attribute("open") is None)


def test_the_rerank_switch_shows_itm_probabilities(browser, site):
    from selenium.webdriver.support.ui import Select

    browser.get(page_url(site, q="a purple circle", k=20))
    before = [c["id"] for c in wait_results(browser)]
    rerank = Select(browser.find_element("id", "rerank"))
    assert [o.get_attribute("value") for o in rerank.options] == ["", site.itm]
    browser.find_element("id", "depth").send_keys("24")
    rerank.select_by_value(site.itm)
    shown = wait(browser, lambda d: (lambda cs: len(cs) >= 20 and all(c["itm"] for c in cs) and cs)(cards(d)[:20]))
    assert all(c["itm"].startswith("ITM ") and c["itm"].endswith("%") for c in shown)
    assert set(c["id"] for c in shown) <= set(h["id"] for h in api(
        site, f"/api/v1/collections/{demo.COLLECTION}/search", text="a purple circle", top_k=24)["hits"])
    query = parse_qs(urlparse(browser.current_url).query)
    assert query["rerank"] == [site.itm] and query["depth"] == ["24"]
    assert before  # the unreranked grid came first


def test_export_json_and_csv(browser, site, downloads):
    browser.get(page_url(site, q="a green square", k=20))
    wait_results(browser)
    shown = settled(browser)  # the next page may still be coming in after the first one paints
    for name in ("mmsearch-results.json", "mmsearch-results.csv"):
        (downloads / name).unlink(missing_ok=True)
    browser.find_element("id", "export-json").click()
    browser.find_element("id", "export-csv").click()
    wait(browser, lambda d: all((downloads / n).is_file() and not list(downloads.glob("*.crdownload"))
                                for n in ("mmsearch-results.json", "mmsearch-results.csv")))
    exported = json.loads((downloads / "mmsearch-results.json").read_text())
    assert [r["id"] for r in exported["results"]] == [c["id"] for c in shown]
    assert exported["query"]["q"] == "a green square" and exported["results"][0]["metadata"]["shape"]
    with open(downloads / "mmsearch-results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["id"]) for r in rows] == [c["id"] for c in shown]
    assert json.loads(rows[0]["metadata"]) == exported["results"][0]["metadata"]


def test_keyboard_and_labels(browser, site):
    from selenium.webdriver.common.keys import Keys

    browser.get(page_url(site, q="a red star"))
    wait_results(browser)
    browser.find_element("tag name", "body").click()
    browser.switch_to.active_element.send_keys("/")
    assert browser.switch_to.active_element.get_attribute("id") == "q"
    unlabeled = browser.execute_script("""return [...document.querySelectorAll('input, select, button')]
      .filter(e => e.type !== 'hidden' && !e.hidden && e.offsetParent !== null)
      .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
      .map(e => e.id || e.outerHTML.slice(0, 80))""")
    assert unlabeled == []
    thumbs = browser.find_elements("css selector", "#grid .thumb")
    assert all(t.get_attribute("aria-label").startswith("Open result") for t in thumbs[:5])
    thumbs[0].send_keys(Keys.ENTER)
    wait(browser, lambda d: d.find_element("id", "viewer").get_attribute("open") is not None)
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    wait(browser, lambda d: d.switch_to.active_element.get_attribute("class") == "thumb")  # focus comes back


def test_the_demo_keeps_the_page_up_and_prints_its_url(tmp_path):
    """`mmsearch demo --web`: after the demo queries the page serves the demo collection at the printed URL."""
    lines: list[str] = []
    seen: dict = {}

    def on_page(url):
        seen["url"] = url
        r = requests.post(url.split("/?")[0] + f"/api/v1/collections/{demo.COLLECTION}/search",
                          json={"text": "a red circle", "top_k": 5}, timeout=30)
        seen["hits"] = len(r.json()["hits"])
        seen["page"] = requests.get(url, timeout=30).text

    demo.run_demo(tmp_path, n_images=60, show=0, workers=0, progress=False, out=lines.append, web="127.0.0.1:0",
                  on_page=on_page)
    assert seen["url"].startswith("http://127.0.0.1:") and "collection=demo-shapes&q=a+red+circle" in seen["url"]
    assert any(seen["url"] in line for line in lines) and seen["hits"] == 5 and "mmsearch" in seen["page"]
