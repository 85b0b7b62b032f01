"""MS-COCO for CHAIR: the 80 categories with their common synonyms, and an annotation-file reader.

The synonyms follow the spirit of the CHAIR reference list (Rohrbach et al.): everyday words for each
category, so "a man riding a motorbike" mentions ``person`` and ``motorcycle``.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

from polysteer.data import read_json
from polysteer.errors import PolysteerError

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


def read_coco(annotations: str | Path, images: str | Path, n: int | None = None, seed: int = 0) -> list[dict]:
    """Rows ``{"image": path, "objects": [category names]}`` from a COCO instances file.

    Args:
        annotations: ``instances_val2014.json`` (or any COCO instances file).
        images: folder holding the images named in the file.
        n: sample this many images (seeded), as the CHAIR protocol's 500 random val images.
        seed: sampling seed.
    """
    path = Path(annotations)
    if not path.is_file():
        raise PolysteerError(f"COCO annotations {path} do not exist; pass instances_val2014.json")
    data = read_json(path, "COCO annotations", "an instances_*.json file from cocodataset.org")
    if not isinstance(data, dict):
        raise PolysteerError(f"{path} is not a COCO instances file: expected a JSON object with 'images', "
                             f"'annotations' and 'categories', got a {type(data).__name__}")
    try:
        rows = _image_rows(data, Path(images))
    except (AttributeError, KeyError, TypeError) as exc:  # any shape other than COCO's
        raise PolysteerError(f"{path} is not a COCO instances file ({type(exc).__name__} {exc}); "
                             "pass instances_val2014.json") from None
    if not rows:
        raise PolysteerError(f"{path} has no annotated images; is it an instances_*.json file?")
    if n is not None and n < len(rows):
        rows = random.Random(seed).sample(rows, n)
    return rows


def _image_rows(data: dict, images: Path) -> list[dict]:
    """``{"image", "objects"}`` for each annotated image of a COCO instances dict."""
    names = {c["id"]: str(c["name"]) for c in data.get("categories", [])}
    objects: dict[int, set[str]] = defaultdict(set)
    for ann in data.get("annotations", []):
        objects[ann["image_id"]].add(names[ann["category_id"]])
    return [{"image": str(images / str(img["file_name"])), "objects": sorted(objects[img["id"]])}
            for img in data.get("images", []) if objects[img["id"]]]
