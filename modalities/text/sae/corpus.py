"""Offline English text for SAE training: prose shipped by Debian packages, or the user's own files.

``debian_corpus`` interleaves documents from several packages (quotations, the Jargon File, the Debian
Reference, the Python documentation) so that any prefix of the stream is already varied. Install them with
``apt-get install fortunes jargon-text debian-reference-en python3-doc``.
"""

from __future__ import annotations

import gzip
import html
import itertools
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from polysteer.errors import PolysteerError

FORTUNES = Path("/usr/share/games/fortunes")
JARGON = Path("/usr/share/doc/jargon-text/jargon.txt.gz")
DEBIAN_REFERENCE = Path("/usr/share/debian-reference")
PYTHON_DOCS = Path("/usr/share/doc")  # python3.X/html/_sources/**/*.rst.txt
DEBIAN_PACKAGES = "fortunes jargon-text debian-reference-en python3-doc"
_TAG = re.compile(r"<(script|style)[^>]*>.*?</\1>|<[^>]+>", re.S | re.I)


def _paragraphs(text: str, min_chars: int = 80, max_chars: int = 4000) -> Iterator[str]:
    """Blank-line separated blocks merged up to ``max_chars``; tiny fragments are dropped."""
    buffer = ""
    for block in re.split(r"\n\s*\n", text):
        block = block.strip()
        if buffer and len(buffer) + len(block) > max_chars:
            yield buffer
            buffer = ""
        buffer = f"{buffer}\n\n{block}" if buffer else block
    if len(buffer) >= min_chars:
        yield buffer


def fortunes() -> Iterator[str]:
    """fortune-mod's English quotation files, one quotation per document (``%`` separated)."""
    for file in sorted(FORTUNES.glob("*")):
        if file.suffix in (".dat", ".u8") or file.is_dir() or "art" in file.name or file.is_symlink():
            continue
        for item in file.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            if len(item.strip()) > 40:
                yield item.strip()


def jargon() -> Iterator[str]:
    """The Jargon File, in paragraphs."""
    if JARGON.is_file():
        yield from _paragraphs(gzip.open(JARGON, "rt", encoding="utf-8", errors="replace").read())


def debian_reference() -> Iterator[str]:
    """The Debian Reference (English HTML), tags stripped, in paragraphs."""
    for file in sorted(DEBIAN_REFERENCE.glob("*.en.html")):
        text = html.unescape(_TAG.sub("", file.read_text(encoding="utf-8", errors="replace")))
        yield from _paragraphs(re.sub(r"[ \t]+", " ", text))


def python_docs() -> Iterator[str]:
    """The Python documentation's reStructuredText sources, in paragraphs."""
    files = {f.resolve() for f in PYTHON_DOCS.glob("python3*/html/_sources/**/*.rst.txt")}
    for file in sorted(files):
        yield from _paragraphs(file.read_text(encoding="utf-8", errors="replace"))


SOURCES: dict[str, Callable[[], Iterable[str]]] = {
    "fortunes": fortunes, "jargon": jargon, "debian-reference": debian_reference, "python-docs": python_docs,
}


def debian_corpus(sources: Sequence[str] = tuple(SOURCES)) -> Iterator[str]:
    """Documents from every installed source, round-robin, each source until it runs out."""
    streams = [iter(SOURCES[name]()) for name in sources]
    found = False
    for group in itertools.zip_longest(*streams):
        for doc in group:
            if doc is not None:
                found = True
                yield doc
    if not found:
        raise PolysteerError(f"no Debian text corpus is installed; run: apt-get install {DEBIAN_PACKAGES}")


def read_documents(paths: Sequence[str | Path]) -> Iterator[str]:
    """Documents from text files (blank-line paragraphs) or JSONL files (a ``text`` field per line)."""
    import json

    for path in map(Path, paths):
        if not path.is_file():
            raise PolysteerError(f"text file {path} does not exist")
        if path.suffix == ".jsonl":
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    yield json.loads(line)["text"]
        else:
            yield from _paragraphs(path.read_text(encoding="utf-8", errors="replace"))


def token_windows(tokenizer, documents: Iterable[str], context: int) -> Iterator[list[int]]:
    """Pack documents (separated by EOS) into windows of exactly ``context`` token ids."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    buffer: list[int] = []
    for doc in documents:
        buffer += tokenizer(doc, add_special_tokens=False).input_ids + [eos]
        while len(buffer) >= context:
            yield buffer[:context]
            buffer = buffer[context:]
