"""Where a model's files come from: a local folder, or a Hugging Face hub id.

Online, a hub id goes to the loader unchanged (``from_pretrained`` downloads or revalidates it as usual).
Offline (``HF_HUB_OFFLINE=1``) or with the hub unreachable, a cached hub id resolves to its snapshot folder
in the Hugging Face cache, and an uncached one fails at once with one line, before the loader's retries.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from polysteer.errors import PolysteerError

PROBE_TIMEOUT_S = 2.0
_TRUE = {"1", "on", "yes", "true"}
_REPO_ID = re.compile(r"^[\w][\w.-]*(/[\w][\w.-]*)?$")


def is_offline() -> bool:
    """Whether the user asked for offline mode (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``), read now."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    constants = sys.modules.get("huggingface_hub.constants")  # set in code rather than the environment
    return any(flag.strip().lower() in _TRUE for flag in flags) or bool(getattr(constants, "HF_HUB_OFFLINE", False))


def endpoint() -> str:
    """The hub's base URL (``HF_ENDPOINT``, read now, else the public hub)."""
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """One HEAD request to the hub with a short timeout, through huggingface_hub's session (so its proxy and
    certificate settings apply, as they will for the download)."""
    from huggingface_hub import get_session

    try:
        return get_session().head(endpoint(), timeout=timeout).status_code < 500
    except Exception:  # any transport failure (DNS, refused, timeout, proxy) means the hub is out of reach
        return False


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache as huggingface_hub finds it: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
    ``$XDG_CACHE_HOME/huggingface/hub`` (``~/.cache`` by default); read now."""
    env = os.environ
    if env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE"):
        return Path(env.get("HF_HUB_CACHE") or env["HUGGINGFACE_HUB_CACHE"]).expanduser()
    home = env.get("HF_HOME") or Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def cached_snapshot(repo_id: str, revision: str = "main") -> str | None:
    """The snapshot folder that ``refs/{revision}`` points to in the hub cache
    (``models--{org}--{name}/snapshots/{commit}``), or None; read without importing huggingface_hub, so the
    offline answer comes at once."""
    repo = hub_cache_dir() / f"models--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / revision
    if not ref.is_file():
        return None
    snapshot = repo / "snapshots" / ref.read_text().strip()
    return str(snapshot) if snapshot.is_dir() else None


def resolve_model_source(name: str | os.PathLike) -> str:
    """What a loader should open for ``name``: the folder itself, the hub id (online), or its cached snapshot.

    Raises:
        PolysteerError: ``name`` is a file, or a path to no folder, or a hub id that is not cached while
            offline or with the hub unreachable.
    """
    name = str(name)
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise PolysteerError(f"model {name!r} is a file: pass the folder that holds it, or a hub id (org/name)")
    if not _REPO_ID.match(name):
        raise PolysteerError(f"model folder {name!r} does not exist (nor is it a hub id such as org/name)")
    offline = is_offline()
    if not offline and hub_reachable():
        return name
    snapshot = cached_snapshot(name)
    if snapshot is not None:
        return snapshot
    why = "HF_HUB_OFFLINE is set" if offline else f"cannot reach {endpoint()}"
    raise PolysteerError(f"model {name!r} is not a local folder and is not in the Hugging Face cache ({why}); "
                         "run once online or pass a local folder")


def first_line(exc: BaseException) -> str:
    """An exception's first non-empty line (loaders' messages run to several lines of advice)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
