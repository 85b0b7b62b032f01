"""Synthetic scenes drawn with PIL: known objects, captions and hallucinated captions, all offline.

Each scene follows a theme (beach, street, garden, night), so objects co-occur the way COCO objects do
(boats with fish, cars with houses). The hallucinated caption adds absent objects from the same theme:
the co-occurrence-driven mistakes that CHAIR and POPE's adversarial split measure.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable

from PIL import Image, ImageDraw

Box = tuple[float, float, float, float]

COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 90, 220), "yellow": (245, 215, 40),
    "orange": (245, 140, 30), "white": (245, 245, 245), "brown": (130, 80, 40), "pink": (240, 130, 190),
    "purple": (140, 60, 190), "grey": (130, 130, 130), "black": (20, 20, 20),
}
THEMES = {
    "beach": {"background": (150, 205, 240), "objects": ("sun", "boat", "fish", "cloud", "bird", "ball")},
    "street": {"background": (190, 190, 190), "objects": ("car", "house", "tree", "sun", "cloud", "bird")},
    "garden": {"background": (170, 225, 150), "objects": ("flower", "tree", "bird", "ball", "house", "sun")},
    "night": {"background": (25, 30, 70), "objects": ("moon", "star", "house", "tree", "car", "cloud")},
}


def _sun(d: ImageDraw.ImageDraw, b: Box, c) -> None:
    x0, y0, x1, y1 = b
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1), (0.7, 0.7), (-0.7, 0.7), (0.7, -0.7), (-0.7, -0.7)):
        d.line([cx + dx * r * 0.6, cy + dy * r * 0.6, cx + dx * r, cy + dy * r], fill=c, width=2)
    d.ellipse([cx - r * 0.55, cy - r * 0.55, cx + r * 0.55, cy + r * 0.55], fill=c)


def _cloud(d, b, c) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    for fx, fy, fr in ((0.3, 0.55, 0.25), (0.55, 0.45, 0.3), (0.75, 0.6, 0.22)):
        d.ellipse([x0 + (fx - fr) * w, y0 + (fy - fr) * h, x0 + (fx + fr) * w, y0 + (fy + fr) * h], fill=c)


def _tree(d, b, c) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    d.rectangle([x0 + 0.42 * w, y0 + 0.55 * h, x0 + 0.58 * w, y1], fill=COLOURS["brown"])
    d.ellipse([x0 + 0.1 * w, y0, x1 - 0.1 * w, y0 + 0.65 * h], fill=c)


def _house(d, b, c) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    d.rectangle([x0 + 0.1 * w, y0 + 0.45 * h, x1 - 0.1 * w, y1], fill=c)
    d.polygon([(x0, y0 + 0.45 * h), ((x0 + x1) / 2, y0 + 0.05 * h), (x1, y0 + 0.45 * h)], fill=COLOURS["brown"])
    d.rectangle([x0 + 0.42 * w, y0 + 0.7 * h, x0 + 0.58 * w, y1], fill=COLOURS["black"])


def _car(d, b, c) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    d.rectangle([x0 + 0.25 * w, y0 + 0.3 * h, x1 - 0.25 * w, y0 + 0.55 * h], fill=c)
    d.rectangle([x0, y0 + 0.5 * h, x1, y0 + 0.8 * h], fill=c)
    for fx in (0.25, 0.75):
        d.ellipse([x0 + (fx - 0.12) * w, y0 + 0.68 * h, x0 + (fx + 0.12) * w, y0 + 0.92 * h], fill=COLOURS["black"])


def _boat(d, b, c) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    d.polygon([(x0, y0 + 0.65 * h), (x1, y0 + 0.65 * h), (x1 - 0.2 * w, y1), (x0 + 0.2 * w, y1)], fill=c)
    d.polygon([(x0 + 0.5 * w, y0), (x0 + 0.5 * w, y0 + 0.6 * h), (x0 + 0.9 * w, y0 + 0.6 * h)], fill=COLOURS["white"])


def _fish(d, b, c) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    d.ellipse([x0 + 0.25 * w, y0 + 0.25 * h, x1, y1 - 0.25 * h], fill=c)
    d.polygon([(x0 + 0.3 * w, y0 + 0.5 * h), (x0, y0 + 0.25 * h), (x0, y0 + 0.75 * h)], fill=c)


def _bird(d, b, c) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    d.line([(x0, y0 + 0.3 * h), (x0 + 0.5 * w, y0 + 0.6 * h), (x1, y0 + 0.3 * h)], fill=c, width=max(2, int(w / 8)))


def _flower(d, b, c) -> None:
    x0, y0, x1, y1 = b
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    for dx, dy in ((0, -1), (1, 0), (0, 1), (-1, 0)):
        px, py = cx + dx * r * 0.5, cy + dy * r * 0.5
        d.ellipse([px - r * 0.35, py - r * 0.35, px + r * 0.35, py + r * 0.35], fill=c)
    d.ellipse([cx - r * 0.25, cy - r * 0.25, cx + r * 0.25, cy + r * 0.25], fill=COLOURS["yellow"])


def _ball(d, b, c) -> None:
    x0, y0, x1, y1 = b
    d.ellipse([x0 + 4, y0 + 4, x1 - 4, y1 - 4], fill=c)
    d.line([x0 + 4, (y0 + y1) / 2, x1 - 4, (y0 + y1) / 2], fill=COLOURS["white"], width=2)


def _moon(d, b, c) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    d.ellipse([x0 + 0.1 * w, y0 + 0.1 * w, x1 - 0.1 * w, y1 - 0.1 * w], fill=c)
    d.ellipse([x0 + 0.35 * w, y0, x1 + 0.15 * w, y1 - 0.2 * w], fill=THEMES["night"]["background"])


def _star(d, b, c) -> None:
    x0, y0, x1, y1 = b
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    points = []
    for k in range(10):
        radius = r if k % 2 == 0 else r * 0.4
        angle = math.pi / 5 * k - math.pi / 2
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    d.polygon(points, fill=c)


# name -> (drawing function, colours it comes in)
OBJECTS: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "sun": (_sun, ("yellow", "orange")), "cloud": (_cloud, ("white", "grey")), "tree": (_tree, ("green",)),
    "house": (_house, ("red", "blue", "yellow")), "car": (_car, ("red", "blue", "green", "black")),
    "boat": (_boat, ("red", "brown", "blue")), "fish": (_fish, ("orange", "red", "purple")),
    "bird": (_bird, ("black", "blue", "red")), "flower": (_flower, ("pink", "red", "purple")),
    "ball": (_ball, ("red", "blue", "orange")), "moon": (_moon, ("yellow", "white")),
    "star": (_star, ("yellow", "white")),
}
SYNONYMS = {  # surface forms for CHAIR; plurals are handled by the parser
    "sun": ("sun",), "cloud": ("cloud",), "tree": ("tree",), "house": ("house", "home", "building"),
    "car": ("car", "automobile"), "boat": ("boat", "ship", "sailboat"), "fish": ("fish",), "bird": ("bird",),
    "flower": ("flower", "blossom"), "ball": ("ball",), "moon": ("moon",), "star": ("star",),
}
CAPTION_WORDS = ("a", "an", "picture", "of", "and", "with", "there", "is", "in", "the", "image", "describe",
                 "detail", "please", "yes", "no", "user", "assistant", "help", "me")


@dataclass
class Scene:
    """One synthetic image with its ground truth.

    Attributes:
        image: the RGB picture.
        objects: object names present, in caption order.
        colours: each object's colour name.
        boxes: each object's pixel box ``(x0, y0, x1, y1)``.
        theme: the theme the objects were drawn from.
        caption: a correct caption.
        hallucinated_caption: the caption plus absent objects that co-occur with the present ones.
    """

    image: Image.Image
    objects: list[str]
    colours: list[str]
    boxes: list[Box]
    theme: str
    caption: str
    hallucinated_caption: str
    absent: list[str] = field(default_factory=list)


def _phrase(colour: str | None, name: str) -> str:
    words = f"{colour} {name}" if colour else name
    return ("an " if words[0] in "aeiou" else "a ") + words


def caption(objects: list[str], colours: list[str | None]) -> str:
    """``"A picture of a red car, a green tree and a yellow sun."``"""
    phrases = [_phrase(c, o) for o, c in zip(objects, colours)]
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"A picture of {listed}."


def make_scene(rng: random.Random, size: int = 96, min_objects: int = 2, max_objects: int = 4,
               n_hallucinated: int = 1) -> Scene:
    """Draw one scene: a theme, 2-4 of its objects in distinct cells of a 3x3 grid, and captions."""
    theme = rng.choice(sorted(THEMES))
    pool = THEMES[theme]["objects"]
    names = rng.sample(pool, rng.randint(min_objects, min(max_objects, len(pool) - n_hallucinated)))
    image = Image.new("RGB", (size, size), THEMES[theme]["background"])
    draw = ImageDraw.Draw(image)
    cell = size / 3
    colours, boxes = [], []
    for name, slot in zip(names, rng.sample(range(9), len(names))):
        draw_fn, palette = OBJECTS[name]
        colour = rng.choice(palette)
        pad = cell * rng.uniform(0.05, 0.15)
        x0, y0 = (slot % 3) * cell + pad, (slot // 3) * cell + pad
        box = (x0, y0, x0 + cell - 2 * pad, y0 + cell - 2 * pad)
        draw_fn(draw, box, COLOURS[colour])
        colours.append(colour)
        boxes.append(box)
    absent = rng.sample([o for o in pool if o not in names], n_hallucinated)
    fake_colours = [rng.choice(OBJECTS[o][1]) for o in absent]
    return Scene(image, names, colours, boxes, theme, caption(names, colours),
                 caption(names + absent, colours + fake_colours), absent)


def make_scenes(n: int, seed: int = 0, size: int = 96, **kwargs) -> list[Scene]:
    """``n`` reproducible scenes (the same seed always draws the same pictures)."""
    rng = random.Random(seed)
    return [make_scene(rng, size, **kwargs) for _ in range(n)]


def vocabulary() -> list[str]:
    """Every word a scene caption, the describe prompt or a POPE question uses (for tiny tokenizers)."""
    words = set(CAPTION_WORDS) | set(COLOURS) | set(OBJECTS)
    words |= {form for forms in SYNONYMS.values() for form in forms}
    return sorted(words | {w + "s" for w in OBJECTS} | {".", ",", "?", ":"})
