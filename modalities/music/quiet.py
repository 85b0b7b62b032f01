"""Third-party log lines that tell a MusicGen user nothing, dropped narrowly (by logger and exact message).

- xformers (imported by audiocraft) logs six lines when its C++/CUDA extensions were built for another torch;
  audiocraft then uses torch's own attention, so nothing is lost.
- transformers warns that MusicGen's pad and start token ids lie outside the vocabulary: by design they are one
  past the codebook size (the special token the delay pattern writes), in every released MusicGen.

Only these records are filtered; every other warning of those loggers still shows.
"""

from __future__ import annotations

import logging
import re

_XFORMERS = "WARNING[XFORMERS]: xFormers can't load C++/CUDA extensions"
_SPECIAL_TOKEN = re.compile(r"Model config: (pad|bos|decoder_start)_token_id must be `None` or an integer within "
                            r"the vocabulary \(between 0 and (\d+)\), got (\d+)\.")


class _Drop(logging.Filter):
    """Drops the two known messages; a marker attribute lets :func:`silence_third_party` add it once."""

    polysteer_music = True

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(_XFORMERS):
            return False
        match = _SPECIAL_TOKEN.match(message)
        # the one-past-the-codebook special token only; any other out-of-range id is a real problem
        return not (match and int(match.group(3)) == int(match.group(2)) + 1)


def silence_third_party() -> None:
    """Install the filters on the ``xformers`` and transformers config loggers (idempotent)."""
    for name in ("xformers", "transformers.configuration_utils"):
        logger = logging.getLogger(name)
        if not any(getattr(f, "polysteer_music", False) for f in logger.filters):
            logger.addFilter(_Drop())
