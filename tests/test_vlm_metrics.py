"""CHAIR and POPE on hand-made captions and answers with known results; the synthetic scenes' ground truth."""

import json

import pytest

from polysteer import PolysteerError
from polysteer.manager import registry
from polysteer.modalities.vision_language.coco import COCO_SYNONYMS
from polysteer.modalities.vision_language.hallucination import (
    Chair,
    ObjectVocabulary,
    Pope,
    PopeQuestion,
    chair,
    pope_answer,
    pope_metrics,
    pope_questions,
)
from polysteer.modalities.vision_language.scenes import SYNONYMS, make_scenes

VOCAB = ObjectVocabulary({"dog": ["puppy"], "cat": ["kitten"], "hot dog": [], "person": ["man", "woman"],
                          "traffic light": [], "car": []})
CAPTIONS = [
    "A man walks two dogs past a red car.",
    "A kitten eats a hot dog next to a puppy.",
    "Two women and a man wait at the traffic lights near cars.",
    "An empty street.",
]
TRUTH = [["person", "dog", "car"], ["cat", "hot dog"], ["person", "traffic light"], ["car"]]


def test_mentions_handle_synonyms_plurals_and_phrases():
    assert VOCAB.mentions(CAPTIONS[0]) == ["person", "dog", "car"]
    assert VOCAB.mentions(CAPTIONS[1]) == ["cat", "hot dog", "dog"]  # "hot dog" is not a dog
    assert VOCAB.mentions(CAPTIONS[2]) == ["person", "person", "traffic light", "car"]
    assert VOCAB.canonical("Puppy") == "dog" and VOCAB.canonical("unicorn") == "unicorn"
    coco = ObjectVocabulary(COCO_SYNONYMS)
    assert coco.mentions("Children ride motorbikes past a fire hydrant and a teddy bear.") == [
        "person", "motorcycle", "fire hydrant", "teddy bear"]


def test_chair_gives_the_exact_numbers():
    result = chair(CAPTIONS, TRUTH, VOCAB)
    assert result.chair_s == 2 / 4  # captions 2 (dog) and 3 (car) hallucinate
    assert result.mentions == 3 + 3 + 4 + 0 and result.hallucinated == 2
    assert result.chair_i == 2 / 10
    assert result.mean_length == (9 + 10 + 12 + 3) / 4
    assert [row["hallucinated"] for row in result.per_caption] == [[], ["dog"], ["car"], []]
    assert chair(["A puppy."], [["puppy"]], VOCAB).chair_s == 0.0  # ground truth goes through the synonyms too
    flags = Chair({"dog": ["puppy"], "car": []}).evaluate(["a puppy", "a car"], objects=[[], ["car"]])
    assert flags == [1.0, 0.0]
    with pytest.raises(PolysteerError, match="one ground-truth"):
        chair(CAPTIONS, TRUTH[:2], VOCAB)


OBJECTS = [["person", "car"], ["person", "car"], ["person", "dog"], ["boat", "fish"], ["boat", "fish"], ["boat"]]


def negatives(questions, image):
    return [q.object for q in questions if q.image == image and not q.present]


def test_pope_splits_pick_the_expected_absent_objects():
    popular = pope_questions(OBJECTS, "popular", per_image=2)
    adversarial = pope_questions(OBJECTS, "adversarial", per_image=2)
    assert negatives(popular, 5) == ["person"]  # the most frequent absent object
    assert negatives(adversarial, 5) == ["fish"]  # the absent object seen most often with a boat
    assert negatives(popular, 2) == ["boat", "car"]
    assert negatives(adversarial, 2) == ["car", "boat"]
    assert [q for q in adversarial if q.image == 5 and q.present] == [PopeQuestion(5, "boat", True)]
    assert len(popular) == 2 * (2 + 2 + 2 + 2 + 2 + 1)
    random_split = pope_questions(OBJECTS, "random", per_image=2, seed=3)
    assert random_split == pope_questions(OBJECTS, "random", per_image=2, seed=3)
    for q in random_split:
        assert (q.object in OBJECTS[q.image]) == q.present
    assert adversarial[0].text == f"Is there a {adversarial[0].object} in the image?"
    with pytest.raises(PolysteerError, match="split"):
        pope_questions(OBJECTS, "hard")


def test_pope_answers_and_metrics_are_exact():
    assert pope_answer("Yes, there is a dog.") and pope_answer("yes") and pope_answer("Nope")
    assert not pope_answer("No, there is not.") and not pope_answer("There is not a dog in the image")
    assert pope_answer("I see a dog. No other animals.")  # only the first sentence counts
    result = pope_metrics([True, True, False, False, True, False], [True, False, False, True, True, False])
    assert (result.accuracy, result.precision, result.recall, result.f1) == (4 / 6, 2 / 3, 2 / 3, 2 / 3)
    assert result.yes_ratio == 0.5 and result.n == 6
    assert pope_metrics([False, False], [True, False]).precision == 0.0
    assert Pope().evaluate(["Yes.", "No.", "Yes"], present=[True, True, False]) == [1.0, 0.0, 0.0]


def test_scenes_ground_truth_scores_perfectly_and_hallucinated_captions_do_not():
    scenes = make_scenes(12, seed=4)
    vocab = ObjectVocabulary(SYNONYMS)
    objects = [s.objects for s in scenes]
    clean = chair([s.caption for s in scenes], objects, vocab)
    assert clean.chair_s == 0.0 and clean.mentions == sum(len(o) for o in objects)
    fake = chair([s.hallucinated_caption for s in scenes], objects, vocab)
    assert fake.chair_s == 1.0 and fake.chair_i == 12 / (clean.mentions + 12)
    assert all(a in s.hallucinated_caption and a not in s.objects for s in scenes for a in s.absent)
    assert make_scenes(2, seed=4)[1].image.tobytes() == scenes[1].image.tobytes()
    questions = pope_questions(objects, "adversarial")
    truth = [q.object in objects[q.image] for q in questions]
    assert pope_metrics(truth, [q.present for q in questions]).accuracy == 1.0


def test_evaluators_are_registered():
    evaluators = registry("evaluators")
    assert evaluators["chair"] is Chair and evaluators["pope"] is Pope and "clip-score" in evaluators


def test_chair_reference_synonyms_and_rules():
    from polysteer.modalities.vision_language.coco import chair_synonyms, chair_vocabulary

    table = chair_synonyms()
    assert len(table) == 80 and "puppy" in table["dog"] and "hot dog" in table and table["stop sign"] == ()
    vocab = chair_vocabulary()
    assert vocab.mentions("A puppy chases a kitten.") == ["dog", "cat"]
    assert vocab.mentions("A baby elephant and a passenger jet.") == ["elephant", "airplane"]  # no person
    assert vocab.mentions("A toilet seat, and a seat by the toilets.") == ["toilet", "toilet"]  # no chair
    assert vocab.mentions("A man on a seat.") == ["person", "chair"]
    legacy = ObjectVocabulary(COCO_SYNONYMS)
    caption = "A surfer with a bow and a baby dog."
    assert vocab.mentions(caption) == ["tie", "dog"] and legacy.mentions(caption) == ["person", "person", "dog"]
    result = chair(["A puppy on the couch."], [["dog"]], vocab)
    assert result.mentions == 2 and result.per_caption[0]["hallucinated"] == ["couch"]
    assert Chair().evaluate(["a puppy"], objects=[["dog"]]) == [0.0]  # the evaluator uses the reference list


def write_coco(tmp_path):
    (tmp_path / "images").mkdir()
    instances = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
                 "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}],
                 "annotations": [{"image_id": 1, "category_id": 18}]}
    captions = {"images": instances["images"],
                "annotations": [{"image_id": 1, "caption": "A woman walks her puppy past a bench."},
                                {"image_id": 1, "caption": "A dog on a leash."},
                                {"image_id": 2, "caption": "Two skiers carry their surfboards."}]}
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    return tmp_path / "instances.json", tmp_path / "images", tmp_path / "captions.json"


def test_chair_ground_truth_comes_from_instances_and_captions(tmp_path):
    from polysteer.modalities.vision_language.coco import chair_vocabulary, read_coco

    instances, images, captions = write_coco(tmp_path)
    only_instances = read_coco(instances, images)
    both = read_coco(instances, images, captions=captions)
    assert [r["objects"] for r in only_instances] == [["dog"]]  # image 2 has no instance annotation
    assert [r["objects"] for r in both] == [["bench", "dog", "person"], ["person", "surfboard"]]
    caption = ["A man with his puppy on a bench."]
    assert chair(caption, [only_instances[0]["objects"]], chair_vocabulary()).chair_s == 1.0
    assert chair(caption, [both[0]["objects"]], chair_vocabulary()).chair_s == 0.0
    (tmp_path / "bad.json").write_text(json.dumps({"annotations": [{"caption": "no id"}]}))
    with pytest.raises(PolysteerError, match="not a COCO captions file"):
        read_coco(instances, images, captions=tmp_path / "bad.json")
