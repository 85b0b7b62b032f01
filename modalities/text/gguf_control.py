"""Conversions at the edge: llama.cpp / repeng GGUF control vectors <-> polysteer Direction files.

llama.cpp adds ``direction.{i}`` (already scaled) to the output of block ``i``; repeng exports the same
format. Block 0 cannot be addressed there (llama.cpp rejects ``direction.0``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from polysteer.direction import Direction
from polysteer.errors import PolysteerError
from polysteer.hookpoints import HookPoint
from polysteer.io import atomic_write

ARCH = "controlvector"


def export_gguf(direction: Direction, path: str | Path, coefficient: float | None = None) -> Path:
    """Write ``direction``'s resid_post vectors, scaled as its plan would scale them, as a control vector."""
    path = Path(path)
    plan = direction.to_plan(coefficient)
    tensors = {}
    for iv in plan:
        hp = HookPoint.parse(iv.hook_point)
        if hp.site != "resid_post" or hp.tower != "text" or hp.layer == 0:
            raise PolysteerError(f"llama.cpp control vectors hold text.blocks.{{i}}.resid_post for i >= 1, not {hp}")
        tensors[f"direction.{hp.layer}"] = (iv.direction.float() * float(iv.coefficient)).numpy()
    import gguf

    def write(tmp: str) -> None:
        writer = gguf.GGUFWriter(tmp, ARCH)
        writer.add_string(f"{ARCH}.model_hint", direction.model.get("name", ""))
        writer.add_uint32(f"{ARCH}.layer_count", len(tensors))
        for name, array in tensors.items():
            writer.add_tensor(name, array.astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    atomic_write(path, write)
    return path


def import_gguf(path: str | Path, model_identity: dict[str, str] | None = None) -> Direction:
    """Read a llama.cpp/repeng control vector as a Direction (unit vectors, their norms as scales)."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise PolysteerError(f"cannot read {path} as GGUF: {exc}") from None
    arch = reader.fields.get("general.architecture")
    if arch is None or bytes(arch.parts[-1]).decode() != ARCH:
        raise PolysteerError(f"{path} is not a control-vector GGUF (general.architecture != {ARCH!r})")
    vectors, scales = {}, {}
    for tensor in reader.tensors:
        if not tensor.name.startswith("direction."):
            continue
        v = torch.tensor(np.array(tensor.data, dtype=np.float32)).flatten()
        hp = f"text.blocks.{int(tensor.name.split('.')[1])}.resid_post"
        vectors[hp], scales[hp] = v / v.norm().clamp_min(1e-12), float(v.norm())
    if not vectors:
        raise PolysteerError(f"{path} holds no direction.N tensors")
    d_model = next(iter(vectors.values())).shape[0]
    hint_field = reader.fields.get(f"{ARCH}.model_hint")
    hint = bytes(hint_field.parts[-1]).decode() if hint_field is not None else ""
    return Direction(vectors=vectors, modality="text", model=model_identity or {"name": hint}, d_model=d_model,
                     scales=scales, finder={"name": "imported-gguf", "params": {}},
                     provenance={"source": str(path)})
