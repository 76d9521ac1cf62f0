"""The demo's synthetic photo domain: coloured shapes on varied backgrounds, each image with its
ground-truth label, captions for training, and the demo's query set with the rule that says which
images each query is about.

Every image is a pure function of (seed space, index): `render(label_for(space, i), space, i)`.
The demo collection and the training stream use different seed spaces, so the shipped model has
never seen the images it is evaluated on.
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars", "cross": "crosses"}
COLOURS = {  # name -> nominal RGB; each drawing jitters it a little
    "red": (215, 35, 35), "green": (40, 165, 60), "blue": (40, 75, 225),
    "yellow": (240, 220, 40), "orange": (250, 135, 20), "purple": (140, 50, 185),
}
BACKGROUNDS = {  # name -> range of the base grey level
    "white": (225, 255), "black": (0, 35), "gray": (105, 150),
}
SIZES = ("small", "large")
COUNTS = (1, 2, 3)
COUNT_WORDS = {1: ("a", "one", "a single"), 2: ("two", "a pair of"), 3: ("three",)}

# Seed spaces: the demo collection and the test collection are drawn from DEMO_SPACE (different index
# ranges); training draws from TRAIN_SPACE only.
DEMO_SPACE = 1
TRAIN_SPACE = 2
JPEG_SHARE = 0.25  # share of collection files written as JPEG (the rest PNG); training sees the same mix
MAX_TILT = math.radians(30)  # rotated shapes are tilted by up to this much (a star upside down is still a star,
# but a tiny ViT trained for minutes needs many more steps when any angle is possible)


@dataclass(frozen=True)
class Label:
    shape: str
    colour: str
    count: int
    size: str
    background: str
    width: int
    height: int
    rotated: bool
    noisy: bool
    jpeg: bool

    def describe(self) -> str:
        noun = self.shape if self.count == 1 else PLURALS[self.shape]
        count = {1: "one", 2: "two", 3: "three"}[self.count]
        return f"{count} {self.size} {self.colour} {noun} on {self.background}"


def _rng(space: int, index: int) -> np.random.Generator:
    return np.random.default_rng([space, index])


def label_for(space: int, index: int) -> Label:
    """The ground truth of image `index` in seed space `space`."""
    rng = _rng(space, index)
    colour_names = list(COLOURS)
    width = int(rng.integers(56, 193))
    aspect = float(rng.uniform(0.8, 1.25))
    height = int(np.clip(round(width * aspect), 48, 224))
    return Label(shape=SHAPES[rng.integers(len(SHAPES))], colour=colour_names[rng.integers(len(colour_names))],
                 count=int(rng.choice(COUNTS)), size=SIZES[rng.integers(2)],
                 background=list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))], width=width, height=height,
                 rotated=bool(rng.random() < 0.5), noisy=bool(rng.random() < 0.3),
                 jpeg=bool(rng.random() < JPEG_SHARE))


def _outline(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Polygon vertices of a shape of circumradius r, rotated by angle (radians)."""
    if shape == "square":
        pts = [(math.cos(a), math.sin(a)) for a in (math.pi / 4 + k * math.pi / 2 for k in range(4))]
    elif shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
    elif shape == "star":
        pts = [((1.0 if k % 2 == 0 else 0.42) * math.cos(a), (1.0 if k % 2 == 0 else 0.42) * math.sin(a))
               for k, a in enumerate(-math.pi / 2 + k * math.pi / 5 for k in range(10))]
    elif shape == "cross":
        w = 0.34
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w),
               (-w, -w)]
        pts = [(x * 0.8, y * 0.8) for x, y in pts]  # a cross's arm tips are at 0.8 * sqrt(2) * r: keep it inside r
    else:
        raise ValueError(f"no outline for {shape!r}")
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def _background(rng: np.random.Generator, name: str, width: int, height: int) -> np.ndarray:
    lo, hi = BACKGROUNDS[name]
    base = rng.uniform(lo, hi)
    tint = rng.uniform(-8, 8, size=3)
    arr = np.empty((height, width, 3), np.float32)
    arr[:] = base + tint
    style = rng.integers(3)
    if style == 1:  # a gentle linear gradient in a random direction
        angle = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        ramp = (xx / width - 0.5) * math.cos(angle) + (yy / height - 0.5) * math.sin(angle)
        arr += (ramp * rng.uniform(10, 30))[:, :, None]
    elif style == 2:  # mottled texture
        small = rng.normal(0, 8, size=(max(2, height // 12), max(2, width // 12))).astype(np.float32)
        tex = np.asarray(Image.fromarray(small, "F").resize((width, height), Image.BILINEAR))
        arr += tex[:, :, None]
    return arr


def _place(rng: np.random.Generator, count: int, r: float, width: int, height: int) -> tuple[list, float]:
    """Centres for `count` non-overlapping shapes of circumradius r (shrinking r until they fit)."""
    for _ in range(12):
        margin = r + 1
        if 2 * margin < min(width, height):
            for _ in range(200):
                centres = [(rng.uniform(margin, width - margin), rng.uniform(margin, height - margin))
                           for _ in range(count)]
                if all(math.dist(a, b) > 2 * r + 2 for i, a in enumerate(centres) for b in centres[i + 1:]):
                    return centres, r
        r *= 0.9
    raise RuntimeError(f"cannot place {count} shapes of radius {r:.1f} in {width}x{height}")


def render(label: Label, space: int, index: int) -> Image.Image:
    """The RGB image for a label (deterministic in space and index)."""
    rng = np.random.default_rng([space, index, 1])
    w, h = label.width, label.height
    side = min(w, h)
    arr = _background(rng, label.background, w, h)
    image = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    frac = rng.uniform(0.15, 0.19) if label.size == "small" else rng.uniform(0.26, 0.32)
    if label.count == 3 and label.size == "large":
        frac *= 0.85
    centres, r = _place(rng, label.count, frac * side, w, h)
    base = np.asarray(COLOURS[label.colour], np.float32)
    for cx, cy in centres:
        fill = tuple(int(v) for v in np.clip(base + rng.uniform(-18, 18, size=3), 0, 255))
        angle = rng.uniform(-MAX_TILT, MAX_TILT) if label.rotated else 0.0
        if label.shape == "circle":
            draw.ellipse((cx - r * 0.9, cy - r * 0.9, cx + r * 0.9, cy + r * 0.9), fill=fill)
        else:
            draw.polygon(_outline(label.shape, cx, cy, r, angle), fill=fill)
    if label.noisy:
        out = np.asarray(image, np.float32) + rng.normal(0, rng.uniform(6, 16), size=(h, w, 3))
        image = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    return image


def encode_file(image: Image.Image, label: Label) -> bytes:
    """The file bytes of an image as the collection stores it (PNG, or JPEG for label.jpeg)."""
    buf = io.BytesIO()
    if label.jpeg:
        image.save(buf, format="JPEG", quality=85)
    else:
        image.save(buf, format="PNG")
    return buf.getvalue()


def file_name(index: int, label: Label) -> str:
    return f"img_{index:05d}.{'jpg' if label.jpeg else 'png'}"


def write_collection(directory: str | os.PathLike, n: int, *, start: int = 0, space: int = DEMO_SPACE) -> Path:
    """Write n images (indices start..start+n-1) and `manifest.jsonl` (uri + label as metadata) into
    directory; returns the manifest path. Existing identical files are kept, so a re-run is cheap."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(start, start + n):
        label = label_for(space, index)
        name = file_name(index, label)
        path = directory / name
        if not path.is_file():
            tmp = path.with_suffix(path.suffix + ".part")
            tmp.write_bytes(encode_file(render(label, space, index), label))
            os.replace(tmp, path)
        lines.append(json.dumps({"uri": name, **asdict(label)}))
    manifest = directory / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


def read_labels(manifest: str | os.PathLike) -> dict[str, Label]:
    """file name -> Label, from a manifest written by write_collection."""
    out = {}
    for line in Path(manifest).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            uri = row.pop("uri")
            out[uri] = Label(**row)
    return out


# ---- captions (training) ------------------------------------------------------------------------------------

TEMPLATES = (
    "{obj}", "{obj}", "{obj} {bg}", "a photo of {obj}", "a photo of {obj} {bg}", "an image of {obj}",
    "a picture showing {obj} {bg}", "{bgnoun} with {obj}", "there is {obj} {bg}", "{obj} in the picture",
)


def noun_phrase(count_word: str, count: int, size: str | None, colour: str | None, shape: str) -> str:
    words = [count_word] + ([size] if size else []) + ([colour] if colour else [])
    words.append(shape if count == 1 else PLURALS[shape])
    if words[0] == "a" and words[1][0] in "aeiou":
        words[0] = "an"
    return " ".join(words)


@dataclass(frozen=True)
class Caption:
    """A text and the attributes it asserts (None = not mentioned)."""

    text: str
    shape: str
    colour: str | None
    count: int | None
    size: str | None
    background: str | None

    def matches(self, label: Label) -> bool:
        return (self.shape == label.shape and self.colour in (None, label.colour)
                and self.count in (None, label.count) and self.size in (None, label.size)
                and self.background in (None, label.background))


def caption_for(label: Label, rng: np.random.Generator) -> Caption:
    """A random true caption of a label. It always names the shape; colour mostly (shape-only captions
    make the shape matter on its own, not just as a tie-breaker among same-coloured images); count, size
    and background sometimes. A caption that leaves the count out reads "a red circle" or "red circles"."""
    colour = label.colour if rng.random() < 0.7 else None
    size = label.size if rng.random() < 0.35 else None
    say_count = label.count > 1 and rng.random() < 0.8 or label.count == 1 and rng.random() < 0.5
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    background = label.background if "{bg" in template else None
    if say_count:
        words = COUNT_WORDS[label.count]
        obj = noun_phrase(words[rng.integers(len(words))], label.count, size, colour, label.shape)
        count = label.count
    else:
        # unspecified count: singular with "a" (reads as "some") or a bare plural
        if rng.random() < 0.5:
            obj = noun_phrase("a", 1, size, colour, label.shape)
        else:
            obj = noun_phrase("", 2, size, colour, label.shape).strip()
        count = None
    text = template.format(obj=obj, bg=f"on a {label.background} background", bgnoun=f"a {label.background} background")
    return Caption(text=text, shape=label.shape, colour=colour, count=count, size=size, background=background)


def caption_corpus() -> list[str]:
    """Every phrase the caption grammar and the queries can produce, for training the tokenizer."""
    texts = set()
    for shape in SHAPES:
        for colour in [*COLOURS, None]:
            for size in [*SIZES, None]:
                for count, words in COUNT_WORDS.items():
                    for word in words:
                        obj = noun_phrase(word, count, size, colour, shape)
                        for bg in BACKGROUNDS:
                            for template in TEMPLATES:
                                texts.add(template.format(obj=obj, bg=f"on a {bg} background",
                                                          bgnoun=f"a {bg} background"))
                obj = noun_phrase("", 2, None, colour, shape).strip()
                texts.add(obj)
    texts.update(q.text for q in QUERIES)
    return sorted(texts)


# ---- the demo's queries ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Query:
    """A text query and the ground truth it asks for: an image is relevant when its label has every
    attribute the query names (count None = any count)."""

    text: str
    kind: str  # "colour+shape" | "count" | "background" | "size"
    shape: str
    colour: str
    count: int | None = None
    background: str | None = None
    size: str | None = None

    def relevant(self, label: Label) -> bool:
        return (label.shape == self.shape and label.colour == self.colour
                and self.count in (None, label.count) and self.background in (None, label.background)
                and self.size in (None, label.size))


QUERIES = (
    Query("a red circle", "colour+shape", "circle", "red"),
    Query("a blue square", "colour+shape", "square", "blue"),
    Query("a green triangle", "colour+shape", "triangle", "green"),
    Query("a yellow star", "colour+shape", "star", "yellow"),
    Query("an orange cross", "colour+shape", "cross", "orange"),
    Query("a purple circle", "colour+shape", "circle", "purple"),
    Query("a red star", "colour+shape", "star", "red"),
    Query("a blue triangle", "colour+shape", "triangle", "blue"),
    Query("a green square", "colour+shape", "square", "green"),
    Query("a yellow cross", "colour+shape", "cross", "yellow"),
    Query("two blue squares", "count", "square", "blue", count=2),
    Query("three yellow stars", "count", "star", "yellow", count=3),
    Query("a single red circle", "count", "circle", "red", count=1),
    Query("a green triangle on a white background", "background", "triangle", "green", background="white"),
    Query("a red circle on a black background", "background", "circle", "red", background="black"),
    Query("a purple star on a gray background", "background", "star", "purple", background="gray"),
    Query("a small orange circle", "size", "circle", "orange", size="small"),
    Query("a large blue cross", "size", "cross", "blue", size="large"),
)


def recall_at_k(ranked_uris: list[str], query: Query, labels: dict[str, Label], k: int = 10) -> float:
    """|relevant ∩ top-k| / min(k, |relevant|): 1.0 when the top k are all relevant (or hold every
    relevant image, when fewer than k exist)."""
    relevant = {uri for uri, label in labels.items() if query.relevant(label)}
    if not relevant:
        raise ValueError(f"query {query.text!r} has no relevant image in this collection")
    hits = len(relevant.intersection(ranked_uris[:k]))
    return hits / min(k, len(relevant))
