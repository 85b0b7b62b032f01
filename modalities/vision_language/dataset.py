"""Image datasets for VTI demos and hallucination evaluation: synthetic scenes, JSONL files, COCO."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from PIL import Image

from polysteer.data import read_jsonl
from polysteer.errors import PolysteerError


@dataclass
class Sample:
    """An image with its ground-truth objects and, for VTI demos, a clean and a hallucinated caption."""

    image: Image.Image | str
    objects: list[str] = field(default_factory=list)
    caption: str | None = None
    hallucinated_caption: str | None = None

    def load_image(self) -> Image.Image:
        """The image as RGB (opened from disk when given as a path)."""
        if isinstance(self.image, Image.Image):
            return self.image.convert("RGB")
        path = Path(self.image)
        if not path.is_file():
            raise PolysteerError(f"image {path} does not exist")
        with Image.open(path) as img:
            return img.convert("RGB")


def scene_samples(n: int, seed: int = 0) -> list[Sample]:
    """``n`` synthetic scenes as samples (see :mod:`scenes`)."""
    from polysteer.modalities.vision_language.scenes import make_scenes

    return [Sample(s.image, s.objects, s.caption, s.hallucinated_caption) for s in make_scenes(n, seed)]


def read_samples(path: str | Path) -> list[Sample]:
    """JSONL rows ``{"image": path, "objects": [...], "caption"?: .., "hallucinated_caption"?: ..}``.

    Relative image paths are resolved against the file's folder; every image must exist.
    """
    path = Path(path)
    samples = [_sample(row, path, f"{path}:{number}") for number, row in read_jsonl(path)]
    if not samples:
        raise PolysteerError(f"{path} holds no samples; write one JSON object per line")
    return samples


def _sample(row: dict, path: Path, where: str) -> Sample:
    """One checked row of :func:`read_samples`."""
    if not isinstance(row.get("image"), str) or not row["image"].strip():
        raise PolysteerError(f"{where}: every row needs an 'image' path (a non-empty string)")
    objects = row.get("objects", [])
    if not isinstance(objects, list) or not all(isinstance(o, str) and o.strip() for o in objects):
        raise PolysteerError(f"{where}: 'objects' must be a list of object names, e.g. [\"dog\", \"sofa\"]")
    for key in ("caption", "hallucinated_caption"):
        if row.get(key) is not None and not (isinstance(row[key], str) and row[key].strip()):
            raise PolysteerError(f"{where}: {key!r} must be a non-empty string")
    image = Path(row["image"])
    image = image if image.is_absolute() else path.parent / image
    if not image.is_file():
        raise PolysteerError(f"{where}: image {image} does not exist")
    return Sample(str(image), list(objects), row.get("caption"), row.get("hallucinated_caption"))


def load_samples(spec: str) -> list[Sample]:
    """``scenes:N`` or ``scenes:N:SEED`` (synthetic, N >= 1) or a JSONL file path."""
    if not spec.startswith("scenes:"):
        return read_samples(spec)
    parts = spec.split(":")[1:]
    try:
        n, seed = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        n = seed = -1
    if len(parts) > 2 or n < 1 or seed < 0:
        raise PolysteerError(f"bad data spec {spec!r}: use 'scenes:N' or 'scenes:N:SEED' with N >= 1 and SEED >= 0")
    return scene_samples(n, seed)


def demo_pairs(samples: Sequence[Sample]) -> list[Sample]:
    """The samples usable as VTI demos (both captions given), with a clear error when there are none."""
    demos = [s for s in samples if s.caption and s.hallucinated_caption]
    if not demos:
        raise PolysteerError("VTI demos need 'caption' and 'hallucinated_caption' for each image "
                             "(the synthetic scenes have both: use 'scenes:N')")
    return demos
