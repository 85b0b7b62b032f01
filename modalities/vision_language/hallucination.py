"""Object-hallucination metrics: CHAIR (captions) and POPE (yes/no object probes).

CHAIR (Rohrbach et al., 2018): object words are parsed from each caption with a synonym table and
compared with the image's ground-truth objects. ``CHAIR_S`` is the fraction of captions with at least
one hallucinated object; ``CHAIR_I`` the fraction of object mentions that are hallucinated (every
mention counts, as in the reference code). POPE (Li et al., 2023) asks "Is there a X in the image?"
for present objects and as many absent ones, sampled at random, among the most frequent objects
(popular) or among the objects that co-occur most with the present ones (adversarial).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from polysteer.errors import PolysteerError
from polysteer.evaluator import Evaluator

POPE_SPLITS = ("random", "popular", "adversarial")
POPE_TEMPLATE = "Is there a {object} in the image?"
_IRREGULAR = {"people": "person", "men": "man", "women": "woman", "children": "child", "mice": "mouse",
              "geese": "goose", "teeth": "tooth", "feet": "foot", "knives": "knife", "leaves": "leaf"}


class ObjectVocabulary:
    """Maps words and multi-word phrases (with simple plurals) to canonical object names.

    Args:
        synonyms: canonical name -> surface forms, e.g. ``{"person": ["man", "woman", "people"]}``.
        phrases: two-word phrases read as one other word before the lookup, e.g. ``{"baby dog": "dog"}`` (CHAIR's
            rules: a "baby dog" is a dog, not a person); the word may name no object (``"baby animal": "animal"``).
        exclusions: word -> context word; the word is not a mention in a caption that has the context word
            (CHAIR: ``{"seat": "toilet"}``, a toilet's seat is not a chair).
    """

    def __init__(self, synonyms: Mapping[str, Iterable[str]], phrases: Mapping[str, str] | None = None,
                 exclusions: Mapping[str, str] | None = None):
        self.lookup: dict[tuple[str, ...], str] = {}
        for name, forms in synonyms.items():
            for form in {name, *forms}:
                self.lookup[tuple(form.lower().split())] = name
        if not self.lookup:
            raise PolysteerError("an object vocabulary needs at least one object")
        self.longest = max(len(key) for key in self.lookup)
        self.phrases = {tuple(k.lower().split()): tuple(v.lower().split()) for k, v in (phrases or {}).items()}
        self.exclusions = {k.lower(): v.lower() for k, v in (exclusions or {}).items()}

    def canonical(self, name: str) -> str:
        """The canonical name of a ground-truth object (itself when unknown)."""
        return self._match(name.lower().split()) or name.lower()

    def mentions(self, caption: str) -> list[str]:
        """Canonical objects mentioned in ``caption``, left to right, longest phrase first."""
        words = re.findall(r"[a-z]+", caption.lower())
        context = {form for w in words for form in (w, *_singulars(w))}
        found, i = [], 0
        while i < len(words):
            rewritten = self._phrase(words[i : i + 2])
            if rewritten is not None:
                name = self._match(rewritten)
                found += [(rewritten, name)] if name is not None else []
                i += 2
                continue
            for n in range(min(self.longest, len(words) - i), 0, -1):
                name = self._match(words[i : i + n])
                if name is not None:
                    found.append((tuple(words[i : i + n]), name))
                    i += n
                    break
            else:
                i += 1
        return [name for surface, name in found if not self._excluded(surface, context)]

    def _phrase(self, pair: Sequence[str]) -> tuple[str, ...] | None:
        if len(pair) < 2 or not self.phrases:
            return None
        for form in (pair[1], *_singulars(pair[1])):
            if (pair[0], form) in self.phrases:
                return self.phrases[(pair[0], form)]
        return None

    def _excluded(self, surface: tuple[str, ...], context: set[str]) -> bool:
        word = surface[-1] if len(surface) == 1 else None
        if word is None:
            return False
        forms = (word, *_singulars(word))
        return any(self.exclusions.get(f) in context for f in forms if f in self.exclusions)

    def _match(self, words: Sequence[str]) -> str | None:
        head, last = tuple(words[:-1]), words[-1]
        for form in (last, *_singulars(last)):
            name = self.lookup.get(head + (form,))
            if name is not None:
                return name
        return None


def _singulars(word: str) -> list[str]:
    if word in _IRREGULAR:
        return [_IRREGULAR[word]]
    out = []
    if word.endswith("ies"):
        out.append(word[:-3] + "y")
    if word.endswith("es"):
        out.append(word[:-2])
    if word.endswith("s") and not word.endswith("ss"):
        out.append(word[:-1])
    return out


@dataclass
class ChairResult:
    """CHAIR over a set of captions, with the per-caption detail."""

    chair_s: float
    chair_i: float
    mentions: int
    hallucinated: int
    mean_length: float  # words per caption
    per_caption: list[dict] = field(default_factory=list)


def chair(captions: Sequence[str], objects: Sequence[Iterable[str]], vocabulary: ObjectVocabulary) -> ChairResult:
    """CHAIR_S and CHAIR_I of ``captions`` against each image's ground-truth ``objects``."""
    if len(captions) != len(objects) or not captions:
        raise PolysteerError(f"CHAIR needs one ground-truth object list per caption, got {len(captions)} "
                             f"captions and {len(objects)} lists")
    rows, n_bad, n_mentions, n_halluc = [], 0, 0, 0
    for text, truth in zip(captions, objects):
        truth_set = {vocabulary.canonical(o) for o in truth}
        mentioned = vocabulary.mentions(text)
        wrong = [m for m in mentioned if m not in truth_set]
        n_bad += bool(wrong)
        n_mentions += len(mentioned)
        n_halluc += len(wrong)
        rows.append({"caption": text, "mentioned": mentioned, "hallucinated": wrong})
    lengths = [len(text.split()) for text in captions]
    return ChairResult(n_bad / len(captions), n_halluc / n_mentions if n_mentions else 0.0, n_mentions, n_halluc,
                       sum(lengths) / len(lengths), rows)


@dataclass(frozen=True)
class PopeQuestion:
    """One yes/no probe: image index, object asked about, and whether it is present."""

    image: int
    object: str
    present: bool

    @property
    def text(self) -> str:
        return POPE_TEMPLATE.format(object=self.object)


def pope_questions(objects: Sequence[Iterable[str]], split: str = "adversarial", per_image: int = 3,
                   seed: int = 0) -> list[PopeQuestion]:
    """Up to ``per_image`` present objects per image, each paired with an absent one from ``split``."""
    if split not in POPE_SPLITS:
        raise PolysteerError(f"unknown POPE split {split!r}; use one of {POPE_SPLITS}")
    truth = [sorted(set(o)) for o in objects]
    frequency = Counter(o for present in truth for o in present)
    together: Counter[tuple[str, str]] = Counter((a, b) for present in truth for a in present for b in present
                                                 if a != b)
    rng = random.Random(seed)
    questions = []
    for index, present in enumerate(truth):
        absent = sorted(set(frequency) - set(present))
        positives = rng.sample(present, min(per_image, len(present)))
        if split == "random":
            negatives = rng.sample(absent, min(len(positives), len(absent)))
        elif split == "popular":
            negatives = sorted(absent, key=lambda o: (-frequency[o], o))[: len(positives)]
        else:
            score = {o: sum(together[(p, o)] for p in present) for o in absent}
            negatives = sorted(absent, key=lambda o: (-score[o], -frequency[o], o))[: len(positives)]
        questions += [PopeQuestion(index, o, True) for o in positives]
        questions += [PopeQuestion(index, o, False) for o in negatives]
    return questions


def pope_answer(text: str) -> bool:
    """POPE's parser: the first sentence says no if it contains 'no' or 'not', otherwise yes."""
    first = text.split(".")[0].replace(",", " ")
    return not ({"no", "not"} & {w.lower() for w in first.split()})


@dataclass
class PopeResult:
    """POPE metrics with "yes" as the positive class."""

    accuracy: float
    precision: float
    recall: float
    f1: float
    yes_ratio: float
    n: int


def pope_metrics(answers: Sequence[bool], present: Sequence[bool]) -> PopeResult:
    """Accuracy, precision, recall, F1 and the fraction of "yes" answers."""
    if len(answers) != len(present) or not answers:
        raise PolysteerError(f"POPE needs one answer per question, got {len(answers)} for {len(present)}")
    tp = sum(a and p for a, p in zip(answers, present))
    fp = sum(a and not p for a, p in zip(answers, present))
    fn = sum(not a and p for a, p in zip(answers, present))
    tn = len(answers) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PopeResult((tp + tn) / len(answers), precision, recall, f1, (tp + fp) / len(answers), len(answers))


class Chair(Evaluator):
    """Per caption: 1.0 if it mentions an object absent from the image, else 0.0 (mean = CHAIR_S)."""

    name = "chair"
    modalities = ("vision_language",)

    def __init__(self, synonyms: Mapping[str, Iterable[str]] | None = None):
        if synonyms is None:
            from polysteer.modalities.vision_language.coco import chair_vocabulary

            self.vocabulary = chair_vocabulary()
        else:
            self.vocabulary = ObjectVocabulary(synonyms)

    def evaluate(self, outputs, objects: Sequence[Iterable[str]] = (), **context):
        result = chair(list(outputs), list(objects), self.vocabulary)
        return [float(bool(row["hallucinated"])) for row in result.per_caption]


class Pope(Evaluator):
    """Per answer: 1.0 if the parsed yes/no matches whether the object is present (mean = accuracy)."""

    name = "pope"
    modalities = ("vision_language",)

    def evaluate(self, outputs, present: Sequence[bool] = (), **context):
        if len(outputs) != len(present):
            raise PolysteerError(f"POPE needs one 'present' flag per answer, got {len(present)} for {len(outputs)}")
        return [float(pope_answer(text) == bool(p)) for text, p in zip(outputs, present)]
