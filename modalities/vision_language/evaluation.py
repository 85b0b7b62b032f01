"""CHAIR and POPE runs: generate with a VLM (and a plan) on a dataset of (image, objects), then score."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from polysteer.engine import Plan
from polysteer.modalities.vision_language.dataset import Sample
from polysteer.modalities.vision_language.generation import DESCRIBE_PROMPT, describe, generate
from polysteer.modalities.vision_language.hallucination import (
    ChairResult,
    ObjectVocabulary,
    PopeQuestion,
    PopeResult,
    chair,
    pope_answer,
    pope_metrics,
    pope_questions,
)


def vocabulary_for(synonyms: "str | Mapping[str, Iterable[str]] | ObjectVocabulary") -> ObjectVocabulary:
    """``'coco'`` (CHAIR's published list and rules), ``'coco-legacy'`` (polysteer's earlier list), ``'scenes'``
    (the synthetic objects), a synonym table or a vocabulary."""
    if isinstance(synonyms, ObjectVocabulary):
        return synonyms
    if synonyms == "coco":
        from polysteer.modalities.vision_language.coco import chair_vocabulary

        return chair_vocabulary()
    if synonyms == "coco-legacy":
        from polysteer.modalities.vision_language.coco import COCO_SYNONYMS

        return ObjectVocabulary(COCO_SYNONYMS)
    if synonyms == "scenes":
        from polysteer.modalities.vision_language.scenes import SYNONYMS

        return ObjectVocabulary(SYNONYMS)
    return ObjectVocabulary(synonyms)


def run_chair(model, processor, samples: Sequence[Sample], plan: Plan | None = None, vocabulary="coco",
              prompt: str = DESCRIBE_PROMPT, max_new_tokens: int = 64, batch_size: int = 8) -> ChairResult:
    """Caption every image (greedy, steered by ``plan``) and compute CHAIR against its objects."""
    captions = describe(model, processor, [s.load_image() for s in samples], prompt, plan=plan,
                        max_new_tokens=max_new_tokens, batch_size=batch_size)
    return chair(captions, [s.objects for s in samples], vocabulary_for(vocabulary))


@dataclass
class PopeRun:
    """POPE metrics with the questions asked and the raw answers."""

    result: PopeResult
    questions: list[PopeQuestion]
    answers: list[str]


def run_pope(model, processor, samples: Sequence[Sample], split: str = "adversarial", plan: Plan | None = None,
             per_image: int = 3, seed: int = 0, max_new_tokens: int = 4, batch_size: int = 8) -> PopeRun:
    """Ask POPE's yes/no questions of ``split`` about every image and score the answers."""
    questions = pope_questions([s.objects for s in samples], split, per_image, seed)
    images = [s.load_image() for s in samples]
    answers = generate(model, processor, [images[q.image] for q in questions], [q.text for q in questions],
                       plan=plan, max_new_tokens=max_new_tokens, batch_size=batch_size)
    result = pope_metrics([pope_answer(a) for a in answers], [q.present for q in questions])
    return PopeRun(result, questions, answers)
