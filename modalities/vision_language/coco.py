"""MS-COCO for CHAIR: the reference synonym list and rules, the annotation readers.

``chair_vocabulary()`` is CHAIR as published (Rohrbach et al. 2018, the list VTI and OPERA report with):
``data/chair_synonyms.txt`` (the authors' ``synonyms.txt``, 80 categories and their words) plus the reference
code's phrase rules ("baby dog" is a dog, "passenger jet" a jet, "toilet seat" a toilet, and "seat" is no chair
in a caption that says "toilet"). Ground truth, as in the reference, is the union of the instance annotations
and the objects the reference captions mention (``read_coco(..., captions=...)``).

``COCO_SYNONYMS`` is polysteer's earlier hand-made list (vocabulary ``coco-legacy``), kept to compare numbers.
"""

from __future__ import annotations

import random
from collections import defaultdict
from functools import lru_cache
from importlib import resources
from pathlib import Path

from polysteer.data import read_json
from polysteer.errors import PolysteerError
from polysteer.modalities.vision_language.hallucination import ObjectVocabulary

_ANIMALS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub")
CHAIR_PHRASES: dict[str, str] = {  # the reference code's two-word rules whose result is another word
    **{f"{age} {animal}": animal for age in ("baby", "adult") for animal in _ANIMALS},
    "passenger jet": "jet", "passenger train": "train", "bow tie": "tie", "toilet seat": "toilet",
}
CHAIR_EXCLUSIONS = {"seat": "toilet"}


@lru_cache(maxsize=1)
def chair_synonyms() -> dict[str, tuple[str, ...]]:
    """The published CHAIR synonym table: COCO category -> its words (``data/chair_synonyms.txt``)."""
    text = resources.files("polysteer.modalities.vision_language").joinpath("data/chair_synonyms.txt").read_text()
    table: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        words = [w.strip() for w in line.split(",") if w.strip()]
        if words and not line.startswith("#"):
            table[words[0]] = tuple(words[1:])
    return table


def chair_vocabulary() -> ObjectVocabulary:
    """CHAIR's vocabulary as published: the synonym table with the reference code's phrase rules."""
    return ObjectVocabulary(chair_synonyms(), CHAIR_PHRASES, CHAIR_EXCLUSIONS)


COCO_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("man", "woman", "girl", "boy", "people", "child", "kid", "baby", "lady", "guy", "player", "skier",
               "surfer", "snowboarder", "skateboarder", "rider", "adult", "worker", "chef", "biker", "police officer",
               "policeman", "teenager", "toddler", "pedestrian", "passenger", "student", "catcher", "pitcher",
               "batter", "umpire", "gentleman", "mother", "father", "spectator", "tourist", "soldier", "cowboy"),
    "bicycle": ("bike", "cycle"), "car": ("automobile", "sedan", "taxi", "suv", "van", "jeep", "coupe"),
    "motorcycle": ("motorbike", "motor bike", "scooter", "moped", "dirt bike"), "airplane": (
        "plane", "jet", "aircraft", "airliner", "jetliner"), "bus": ("minibus", "trolley", "double decker"),
    "train": ("locomotive", "tram", "subway"), "truck": ("pickup", "lorry", "firetruck", "fire truck"),
    "boat": ("ship", "sailboat", "kayak", "canoe", "yacht", "ferry", "raft", "vessel"),
    "traffic light": ("stop light", "stoplight", "traffic signal", "street light", "signal light"),
    "fire hydrant": ("hydrant",), "stop sign": (), "parking meter": ("meter",), "bench": ("pew",),
    "bird": ("duck", "pigeon", "seagull", "gull", "parrot", "goose", "swan", "eagle", "owl", "chicken", "hen"),
    "cat": ("kitten", "kitty"), "dog": ("puppy", "pup", "hound", "terrier", "poodle", "labrador"),
    "horse": ("pony", "foal", "stallion", "mare", "colt"), "sheep": ("lamb", "ram", "ewe"),
    "cow": ("cattle", "bull", "calf", "oxen", "ox", "buffalo"), "elephant": (), "bear": (),
    "zebra": (), "giraffe": (), "backpack": ("back pack", "knapsack", "rucksack"), "umbrella": ("parasol",),
    "handbag": ("purse", "hand bag", "bag"), "tie": ("necktie", "bow tie"), "suitcase": ("luggage", "suit case"),
    "frisbee": ("flying disc",), "skis": ("ski",), "snowboard": ("snow board",), "sports ball": (
        "ball", "soccer ball", "baseball", "football", "basketball", "tennis ball", "volleyball"),
    "kite": (), "baseball bat": ("bat",), "baseball glove": ("glove", "mitt"), "skateboard": ("skate board",),
    "surfboard": ("surf board", "board", "paddle board"), "tennis racket": ("racket", "racquet"),
    "bottle": ("water bottle",), "wine glass": ("wineglass",), "cup": ("mug", "coffee cup", "teacup"),
    "fork": (), "knife": (), "spoon": (), "bowl": (), "banana": (), "apple": (), "sandwich": (
        "burger", "hamburger", "panini"), "orange": (), "broccoli": (), "carrot": (),
    "hot dog": ("hotdog",), "pizza": (), "donut": ("doughnut",), "cake": ("cupcake", "cheesecake"),
    "chair": ("stool", "seat", "armchair"), "couch": ("sofa", "loveseat"), "potted plant": (
        "houseplant", "plant", "flower pot", "flowerpot"), "bed": ("mattress",), "dining table": (
        "table", "desk", "picnic table"), "toilet": ("urinal", "commode"), "tv": ("television", "monitor", "screen"),
    "laptop": ("computer", "notebook", "netbook"), "mouse": ("computer mouse",), "remote": (
        "remote control", "controller"), "keyboard": (), "cell phone": ("phone", "cellphone", "smartphone",
                                                                      "mobile phone"),
    "microwave": (), "oven": ("stove",), "toaster": (), "sink": (), "refrigerator": ("fridge",), "book": ("novel",),
    "clock": (), "vase": (), "scissors": (), "teddy bear": ("teddy", "stuffed animal", "plush"), "hair drier": (
        "hair dryer", "hairdryer", "blow dryer", "dryer"), "toothbrush": ("tooth brush",),
}


def read_coco(annotations: str | Path, images: str | Path, n: int | None = None, seed: int = 0,
              captions: str | Path | None = None, vocabulary: ObjectVocabulary | None = None) -> list[dict]:
    """Rows ``{"image": path, "objects": [category names]}`` from a COCO instances file (and captions file).

    Args:
        annotations: ``instances_val2014.json`` (or any COCO instances file).
        images: folder holding the images named in the file.
        n: sample this many images (seeded), as the CHAIR protocol's 500 random val images.
        seed: sampling seed.
        captions: ``captions_val2014.json``: the objects its reference captions mention join the ground truth, as
            in the CHAIR reference code (without it: instances only).
        vocabulary: how captions are read (default: :func:`chair_vocabulary`).
    """
    data = _read_coco_json(annotations, "instances", "'images', 'annotations' and 'categories'")
    mentioned = _caption_objects(captions, vocabulary or chair_vocabulary()) if captions is not None else {}
    try:
        rows = _image_rows(data, Path(images), mentioned)
    except (AttributeError, KeyError, TypeError) as exc:  # any shape other than COCO's
        raise PolysteerError(f"{annotations} is not a COCO instances file ({type(exc).__name__} {exc}); "
                             "pass instances_val2014.json") from None
    path = Path(annotations)
    if not rows:
        raise PolysteerError(f"{path} has no annotated images; is it an instances_*.json file?")
    if n is not None and n < len(rows):
        rows = random.Random(seed).sample(rows, n)
    return rows


def _read_coco_json(path: str | Path, kind: str, keys: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise PolysteerError(f"COCO {kind} file {path} does not exist; pass {kind}_val2014.json")
    data = read_json(path, f"COCO {kind}", f"a {kind}_*.json file from cocodataset.org")
    if not isinstance(data, dict):
        raise PolysteerError(f"{path} is not a COCO {kind} file: expected a JSON object with {keys}, "
                             f"got a {type(data).__name__}")
    return data


def _caption_objects(path: str | Path, vocabulary: ObjectVocabulary) -> dict[int, set[str]]:
    """Image id -> the objects its reference captions mention."""
    data = _read_coco_json(path, "captions", "'images' and 'annotations'")
    objects: dict[int, set[str]] = defaultdict(set)
    try:
        for ann in data.get("annotations", []):
            objects[ann["image_id"]].update(vocabulary.mentions(str(ann["caption"])))
    except (AttributeError, KeyError, TypeError) as exc:
        raise PolysteerError(f"{path} is not a COCO captions file ({type(exc).__name__} {exc}); "
                             "pass captions_val2014.json") from None
    return objects


def _image_rows(data: dict, images: Path, mentioned: dict[int, set[str]] | None = None) -> list[dict]:
    """``{"image", "objects"}`` for each image of a COCO instances dict with an annotated or mentioned object."""
    names = {c["id"]: str(c["name"]) for c in data.get("categories", [])}
    objects: dict[int, set[str]] = defaultdict(set)
    for ann in data.get("annotations", []):
        objects[ann["image_id"]].add(names[ann["category_id"]])
    for image_id, found in (mentioned or {}).items():
        objects[image_id] |= found
    return [{"image": str(images / str(img["file_name"])), "objects": sorted(objects[img["id"]])}
            for img in data.get("images", []) if objects[img["id"]]]
