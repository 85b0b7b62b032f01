"""Progress for generation: a bar that moves one tick per new token, whatever generates them."""

from __future__ import annotations

from typing import Any


class TokenTicks:
    """Advances ``bar`` by the batch's ``rows`` at each forward pass of ``model`` after the prompt's (one pass per
    new token), so a progress bar counts tokens without the generating code knowing about it."""

    def __init__(self, model: Any, bar: Any, rows: int):
        self.model, self.bar, self.rows, self.handle, self.calls = model, bar, rows, None, 0

    def __enter__(self) -> "TokenTicks":
        self.handle = self.model.register_forward_pre_hook(self._tick)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()

    def _tick(self, module, args) -> None:
        self.calls += 1
        if self.calls > 1:  # the first forward reads the prompt and yields the first token
            self.bar.update(self.rows)
