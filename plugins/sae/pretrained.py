"""Where an SAE comes from: a local folder or file, or a SAELens release id ``RELEASE/SAE_ID``.

A release id is looked up in SAELens' pretrained directory (the ``pretrained_saes.yaml`` that ships with
``sae-lens``, read directly, and only the release's own block parsed: importing ``sae_lens`` or parsing the whole
36,000-line file takes seconds to a minute), which maps it to a Hugging Face repo and folder. Those files are
fetched with ``huggingface_hub`` into its cache (``HF_HUB_OFFLINE`` reads the cache only), then read by polysteer's
own readers, so only releases stored as SAELens folders or Gemma Scope ``params.npz`` (SAELens' ``gemma_2``
conversion) load.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polysteer.errors import PolysteerError
from polysteer.option_types import Parsed, check_input_path
from polysteer.plugins.sae.formats import CFG_FILE, NPZ_FILE, WEIGHTS_FILE

DIRECTORY_FILE = "pretrained_saes.yaml"
READABLE = ("sae_lens", "gemma_2")  # SAELens conversions whose files polysteer reads
_OVERRIDES = ("hook_name", "normalize_activations", "model_name")  # release config_overrides that change loading


@dataclass
class SAESource:
    """A local SAE location and what the release directory adds to its files.

    Attributes:
        path: the folder (``cfg.json`` + ``sae_weights.safetensors``), or a ``params.npz`` or its folder.
        hook_point: where the SAE reads, when its files do not say (Gemma Scope).
        overrides: ``cfg.json`` keys the release sets (SAELens' ``config_overrides``).
        scaling_factor: the release's ``norm_scaling_factor`` (folded when the SAE says ``expected_average_only_in``).
        release: ``RELEASE/SAE_ID`` when it came from the directory.
    """

    path: Path
    hook_point: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    scaling_factor: float | None = None
    release: str | None = None


def locate(sae: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> SAESource:
    """An existing path as is, else a ``RELEASE/SAE_ID`` resolved (and downloaded when online) to local files."""
    path = Path(sae)
    if path.exists():
        return SAESource(path)
    release, _, sae_id = str(sae).partition("/")
    if not release or not sae_id:
        raise PolysteerError(f"SAE {str(sae)!r} does not exist; give an SAE folder (cfg.json + "
                             "sae_weights.safetensors), a Gemma Scope params.npz, or a SAELens RELEASE/SAE_ID")
    return resolve_release(release, sae_id, str(cache_dir) if cache_dir else _env_cache())


def check_sae(text: str, option: str = "--sae") -> str:
    """``text`` if it is a readable path or a release id whose files are local now (downloaded if need be)."""
    if Path(text).exists():
        return check_input_path(text, "any", option)
    try:
        locate(text)
    except PolysteerError as exc:
        raise PolysteerError(f"{option}: {exc}") from None
    return text


def sae_type() -> Parsed:
    """The click type of every ``--sae`` option: a folder or file, or a SAELens ``RELEASE/SAE_ID``."""
    return Parsed("SAE", check_sae, "PATH|RELEASE/SAE_ID")


def directory_file() -> Path | None:
    """SAELens' ``pretrained_saes.yaml``, found without importing ``sae_lens``; None when it is not installed."""
    try:
        spec = importlib.util.find_spec("sae_lens")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    file = Path(next(iter(spec.submodule_search_locations))) / DIRECTORY_FILE
    return file if file.is_file() else None


@functools.cache
def _directory_text(file: Path) -> str:
    return file.read_text(encoding="utf-8") + "\n"


def release_names(file: Path) -> list[str]:
    """Every release the directory lists (its top-level keys, one a line)."""
    return re.findall(r"^([^\s#][^\n]*):[ \t]*$", _directory_text(file), re.M)


@functools.cache
def read_release(file: Path, release: str) -> dict[str, Any] | None:
    """The entry of ``release`` (``repo_id``, ``conversion_func``, ``saes``: id -> entry), or None if not listed."""
    import yaml

    block = re.search(rf"^{re.escape(release)}:[ \t]*\n(?:(?:[ \t#][^\n]*)?\n)*", _directory_text(file), re.M)
    if block is None:
        return None
    try:
        data = yaml.load(block.group(0), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        entry = next(iter(data.values()))
        return {**entry, "saes": {str(s["id"]): s for s in entry.get("saes") or []}, "repo_id": entry["repo_id"]}
    except (yaml.YAMLError, AttributeError, StopIteration, KeyError, TypeError) as exc:
        raise PolysteerError(f"{file}: the entry of {release!r} does not parse ({type(exc).__name__}); reinstall "
                             "sae-lens") from None


@functools.cache
def resolve_release(release: str, sae_id: str, cache_dir: str | None = None) -> SAESource:
    """The local files of SAELens release ``release``'s SAE ``sae_id``, fetched into the Hugging Face cache."""
    label = f"{release}/{sae_id}"
    entry, sae = _lookup(release, sae_id)
    conversion = entry.get("conversion_func") or "sae_lens"
    if conversion not in READABLE:
        raise PolysteerError(f"SAE {label}: its release is stored in SAELens' {conversion!r} layout, which polysteer "
                             "does not read (it reads SAELens folders and Gemma Scope params.npz); convert it with "
                             "sae_lens.SAE.from_pretrained(...).save_model(DIR) and pass --sae DIR")
    repo, folder = str(entry["repo_id"]), str(sae["path"]).strip("/")
    hook = _gemma_hook(repo, folder, label) if conversion == "gemma_2" else None  # refused before downloading
    names = [NPZ_FILE] if conversion == "gemma_2" else [CFG_FILE, WEIGHTS_FILE]
    files = [_download(repo, f"{folder}/{name}", label, cache_dir) for name in names]
    overrides = {k: v for k, v in (entry.get("config_overrides") or {}).items() if k in _OVERRIDES}
    factor = sae.get("norm_scaling_factor")
    path = files[0] if conversion == "gemma_2" else files[0].parent
    return SAESource(path, hook, overrides, float(factor) if factor is not None else None, label)


def _lookup(release: str, sae_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The directory entries of ``release`` and its ``sae_id``, or one line naming the problem and the fix."""
    file = directory_file()
    if file is None:
        raise PolysteerError(f"SAE {release}/{sae_id!s} is not a local path, and SAELens release ids need sae-lens: "
                             "pip install sae-lens (or give an SAE folder)")
    entry = read_release(file, release)
    if entry is None:
        close = difflib.get_close_matches(release, release_names(file), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise PolysteerError(f"SAE {release}/{sae_id}: no such local path, and {release!r} is not a SAELens release "
                             f"({hint}see {file}); give an SAE folder or a listed RELEASE/SAE_ID")
    saes = entry["saes"]
    if sae_id not in saes:
        close = difflib.get_close_matches(sae_id, list(saes), n=1) or list(saes)[:1]
        raise PolysteerError(f"SAELens release {release!r} has no SAE {sae_id!r} (e.g. {close[0]!r}; "
                             f"{len(saes)} ids in {file})")
    return entry, saes[sae_id]


def _env_cache() -> str | None:
    """The Hugging Face cache as the environment names it now (``huggingface_hub`` reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    return str(Path(os.environ["HF_HOME"]) / "hub") if os.environ.get("HF_HOME") else None


def _offline() -> bool:
    """``HF_HUB_OFFLINE`` as set now (``huggingface_hub`` reads it once, at import)."""
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _download(repo: str, filename: str, label: str, cache_dir: str | None) -> Path:
    """The cached (or freshly downloaded) file, or one line saying why it is not there and what to do."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    offline = _offline()
    try:
        return Path(hf_hub_download(repo, filename, cache_dir=cache_dir, local_files_only=offline))
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face Hub cannot be reached"
        raise PolysteerError(f"SAE {label}: {repo}/{filename} is not in the Hugging Face cache and {why}; run once "
                             "online to download it (unset HF_HUB_OFFLINE), or give a local SAE folder") from None
    except EntryNotFoundError:
        raise PolysteerError(f"SAE {label}: {repo} has no {filename}; the release directory of this sae-lens is "
                             "out of date (pip install -U sae-lens)") from None
    except (HfHubHTTPError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PolysteerError(f"SAE {label}: cannot fetch {repo}/{filename} ({first}); check access to the repo "
                             "(`hf auth login` for gated ones) or give a local SAE folder") from None


def _gemma_hook(repo: str, folder: str, label: str) -> str:
    """The hook point SAELens' ``gemma_2`` loader names, in polysteer's words."""
    layer = re.search(r"layer_(\d+)", folder)
    if "embedding" in folder or layer is None:
        raise PolysteerError(f"SAE {label} reads the token embeddings (hook_embed), which polysteer cannot steer")
    if "res" in repo:
        return f"text.blocks.{layer.group(1)}.resid_post"
    if "mlp" in repo:
        return f"text.blocks.{layer.group(1)}.mlp_out"
    raise PolysteerError(f"SAE {label} reads attn.hook_z (the heads' outputs before the output projection), which "
                         "polysteer cannot steer; use a -res or -mlp release")
