"""The ``detector`` evaluator: a detector's pooled score of each generated text."""

from __future__ import annotations

from typing import Sequence

from polysteer.errors import PolysteerError
from polysteer.evaluator import Evaluator
from polysteer.modalities.text.detect import score_texts
from polysteer.plugins.detection import Detector


class DetectorScore(Evaluator):
    """A detector's pooled score of each output (a concept or artificial-text monitor).

    Args:
        model, tokenizer: the text model whose activations are read.
        detector: a :class:`~polysteer.plugins.detection.scoring.Detector`.
        hook_point: where the detector reads.
        pooling: ``mean`` or ``max`` over the output's tokens.
        max_norm: leave out tokens above this norm (an SAE's ``max_norm``).
    """

    name = "detector"
    modalities = ("text",)

    def __init__(self, model=None, tokenizer=None, detector: Detector | None = None, hook_point: str = "",
                 pooling: str = "mean", max_norm: float | None = None):
        self.model, self.tokenizer, self.detector = model, tokenizer, detector
        self.hook_point, self.pooling, self.max_norm = hook_point, pooling, max_norm

    def evaluate(self, outputs, prompts: Sequence[str] | None = None, **context):
        """Scores of ``outputs``; with ``prompts`` only the output tokens are read, after the chat-formatted prompt."""
        if self.model is None or self.detector is None or not self.hook_point:
            raise PolysteerError("the detector evaluator needs model, tokenizer, detector and hook_point")
        scores = score_texts(self.model, self.tokenizer, list(outputs), self.detector, self.hook_point, self.pooling,
                             self.max_norm, prompts, chat=prompts is not None)
        return scores.tolist()
