"""``polysteer vlm``: find VTI (or other) directions, describe images, evaluate CHAIR / POPE."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from polysteer.errors import PolysteerError
from polysteer.finder import make_finder
from polysteer.io import write_text_atomic
from polysteer.option_types import FINITE_FLOAT, POSITIVE_INT, PROBABILITY, CheckedChoice, input_type, words_type
from polysteer.options import (
    combine,
    direction_option,
    finder_option,
    finder_param_option,
    layers_option,
    max_new_tokens_option,
    model_options,
    operator_option,
    output_option,
    resolve_layers,
    seed_option,
    site_option,
)

vlm_model_options = model_options(required=True,
                                  help="HF model path or id, or 'tiny-llava' / 'tiny-idefics3' (random, offline).")
demos_option = click.option("--demos", default="scenes:16", show_default=True,
                            help="'scenes:N[:SEED]' (synthetic) or JSONL rows {image, caption, hallucinated_caption}.")
prompt_option = click.option("--prompt", default=None,
                             help="Prompt shown with each image for captions and demos (default: VTI's).")
steer_options = combine(
    direction_option(with_coef=False, coef_hint="set the strengths with --alpha-text and --alpha-vision",
                     help="Direction file (VTI or another vision_language direction)."),
    click.option("--alpha-vision", type=FINITE_FLOAT, help="Visual-direction strength (default: the file's)."),
    click.option("--alpha-text", type=FINITE_FLOAT,
                 help="Text-direction strength or coefficient (default: the file's)."),
    click.option("--force", is_flag=True, help="Use a direction made for another model configuration."),
)


def _check_steering(direction, alpha_vision, alpha_text) -> None:
    """Strengths steer a direction: without -d they would be ignored."""
    if direction is None and (alpha_vision is not None or alpha_text is not None):
        raise PolysteerError("--alpha-vision and --alpha-text set a direction's strengths: give -d FILE too")


@click.group()
def vlm():
    """Vision-language models: VTI hallucination steering, captions, CHAIR and POPE."""


@vlm.command(name="find-vti")
@vlm_model_options
@demos_option
@click.option("--trials", default=50, show_default=True, type=POSITIVE_INT, help="Masked copies per demo image.")
@click.option("--mask-ratio", default=0.99, show_default=True, type=PROBABILITY,
              help="Fraction of patches masked per copy.")
@click.option("--alpha-vision", default=0.9, show_default=True, type=FINITE_FLOAT)
@click.option("--alpha-text", default=0.9, show_default=True, type=FINITE_FLOAT)
@layers_option("--vision-layers", help="Vision-tower blocks (default: all).")
@layers_option("--text-layers", help="Text-tower blocks (default: all).")
@click.option("--pca", type=CheckedChoice(["joint", "per-token"]), default="joint", show_default=True,
              help="joint: one PCA across the chosen layers (the reference code); per-token: one per layer and token.")
@prompt_option
@click.option("--batch-size", default=8, show_default=True, type=POSITIVE_INT)
@seed_option()
@output_option(help="Direction file to write (.safetensors).")
def find_vti_command(model_name, device, dtype, demos, trials, mask_ratio, alpha_vision, alpha_text, vision_layers,
                     text_layers, pca, prompt, batch_size, seed, output):
    """Find VTI's visual and textual directions from demo images with clean and hallucinated captions."""
    from polysteer.modalities.vision_language.dataset import demo_pairs, load_samples
    from polysteer.modalities.vision_language.generation import DESCRIBE_PROMPT
    from polysteer.modalities.vision_language.modality import VisionLanguageModality
    from polysteer.modalities.vision_language.workflow import find_vti, load_vlm

    samples = load_samples(demos)
    demo_pairs(samples)  # VTI needs both captions: fail now rather than after the model loads
    model, processor = load_vlm(model_name, device, dtype)
    modality = VisionLanguageModality()
    direction = find_vti(model, processor, samples,
                         resolve_layers(vision_layers, modality.n_layers(model, "vision")),
                         resolve_layers(text_layers, modality.n_layers(model, "text")), trials, mask_ratio,
                         alpha_vision, alpha_text, prompt or DESCRIBE_PROMPT, batch_size, seed, pca)
    direction.provenance["demos"] = demos
    direction.save(output)
    click.echo(f"wrote {output}: VTI over {len(direction.vectors)} text and {len(direction.extras)} vision layers")


@vlm.command(name="find")
@vlm_model_options
@demos_option
@finder_option()
@finder_param_option()
@layers_option(help="Text-tower blocks (default: all).")
@site_option()
@operator_option("add", help="Operator stored as the file's default.")
@prompt_option
@output_option(help="Direction file to write (.safetensors).")
def find_command(model_name, device, dtype, demos, finder, finder_params, layers, site, operator, prompt, output):
    """Fit any finder (DiffMean, RFM, ...) on clean vs hallucinated captions of the demo images."""
    from polysteer.modalities.vision_language.dataset import demo_pairs, load_samples
    from polysteer.modalities.vision_language.generation import DESCRIBE_PROMPT
    from polysteer.modalities.vision_language.modality import VisionLanguageModality
    from polysteer.modalities.vision_language.workflow import caption_direction, load_vlm

    make_finder(finder, **finder_params)  # unknown parameters fail before the model loads
    samples = load_samples(demos)
    demo_pairs(samples)
    model, processor = load_vlm(model_name, device, dtype)
    chosen = resolve_layers(layers, VisionLanguageModality().n_layers(model, "text"))
    direction = caption_direction(model, processor, samples, finder, chosen, site, prompt=prompt or DESCRIBE_PROMPT,
                                  **finder_params)
    direction.operator = operator
    direction.provenance["demos"] = demos
    direction.save(output)
    click.echo(f"wrote {output}: {finder} at {len(direction.vectors)} text layers")


@vlm.command()
@click.argument("images", nargs=-1, required=True, type=input_type())
@vlm_model_options
@steer_options
@prompt_option
@max_new_tokens_option(64, help="Caption length.")
@click.option("--compare", is_flag=True,
              help="Caption unsteered too: print both captions, the first token step where they differ, and "
                   "which objects each mentions (in the scene or not, with --objects).")
@click.option("--objects", type=words_type,
              help="With --compare: the objects really in the image(s), comma-separated (e.g. car,tree,sun).")
@click.option("--vocabulary", type=CheckedChoice(["coco", "coco-legacy", "scenes"]),
              help="With --compare: the object words to look for (default: scenes for tiny- models, else coco).")
def describe(images, model_name, device, dtype, direction, alpha_vision, alpha_text, force, prompt, max_new_tokens,
             compare, objects, vocabulary):
    """Caption IMAGES, steered by --direction when given.

    What to expect from tiny-llava / tiny-idefics3: their weights are random, so captions are strings of
    scene words, and a steered caption often matches the unsteered one at the default strength (VTI's
    default turns each steered output by at most about 5 degrees). Use --compare to see where steering changes
    the tokens, and raise --alpha-text / --alpha-vision to see more.
    """
    from polysteer.modalities.vision_language.generation import DESCRIBE_PROMPT
    from polysteer.modalities.vision_language.workflow import direction_plan, load_vlm

    _check_steering(direction, alpha_vision, alpha_text)
    if compare and not direction:
        raise PolysteerError("--compare sets steered against unsteered captions: give -d FILE too")
    if (objects or vocabulary) and not compare:
        raise PolysteerError("--objects and --vocabulary check the captions of --compare: add --compare")
    pictures = [_open_image(path) for path in images]
    model, processor = load_vlm(model_name, device, dtype)
    plan = direction_plan(model, direction, alpha_vision, alpha_text, force) if direction else None
    runs = {"steered": plan, "unsteered": None} if compare else {"steered": plan}
    captions = _captions(model, processor, pictures, prompt or DESCRIBE_PROMPT, runs, max_new_tokens)
    if not compare:
        for path, (caption, _) in zip(images, captions["steered"]):
            click.echo(f"{path}: {caption}")
        return
    words = _vocabulary(vocabulary, model_name)
    for i, path in enumerate(images):
        _echo_comparison(path, {name: captions[name][i] for name in ("unsteered", "steered")}, words, objects)


def _captions(model, processor, pictures: list, prompt: str, runs: dict, max_new_tokens: int) -> dict:
    """``{run name: [(caption, token ids)] per image}`` for each named plan."""
    from polysteer.modalities.vision_language.generation import generate_ids

    decode = processor.tokenizer.decode
    out = {}
    for name, plan in runs.items():
        ids = generate_ids(model, processor, pictures, [prompt] * len(pictures), plan, max_new_tokens)
        out[name] = [(decode(row, skip_special_tokens=True).strip(), row) for row in ids]
    return out


def _vocabulary(vocabulary: str | None, model_name: str):
    """The object vocabulary asked for; by default the scenes' for the tiny models (it is their vocabulary)."""
    from polysteer.modalities.vision_language.evaluation import vocabulary_for
    from polysteer.modalities.vision_language.workflow import TINY_PREFIX

    return vocabulary_for(vocabulary or ("scenes" if model_name.startswith(TINY_PREFIX) else "coco"))


def _echo_comparison(path: str, runs: dict, words, objects: list[str] | None) -> None:
    """Both captions of one image, where their tokens diverge, and the objects each mentions."""
    from polysteer.modalities.vision_language.generation import first_divergence

    (base, base_ids), (steered, steered_ids) = runs["unsteered"], runs["steered"]
    click.echo(f"{path}:")
    click.echo(f"  [unsteered] {base}")
    click.echo(f"  [steered]   {steered}")
    step = first_divergence(base_ids, steered_ids)
    click.echo("  tokens: identical at every step" if step is None else
               f"  tokens: first differ at step {step} of {max(len(base_ids), len(steered_ids))}")
    truth = {words.canonical(o) for o in objects or ()}
    for name, caption in (("unsteered", base), ("steered", steered)):
        mentioned = list(dict.fromkeys(words.mentions(caption)))
        if not objects:
            listed = ", ".join(mentioned) or "none"
            click.echo(f"  objects ({name}): {listed} (give --objects to check them against the scene)")
            continue
        inside = [m for m in mentioned if m in truth]
        outside = [m for m in mentioned if m not in truth]
        click.echo(f"  objects ({name}): in the scene: {', '.join(inside) or 'none'}; "
                   f"not in the scene: {', '.join(outside) or 'none'}")


@vlm.command(name="eval")
@click.option("--metric", type=CheckedChoice(["chair", "pope"]), required=True)
@vlm_model_options
@click.option("--data", default="scenes:32:1", show_default=True,
              help="'scenes:N[:SEED]' or JSONL rows {image, objects}.")
@click.option("--coco-annotations", type=input_type(), help="COCO instances JSON (instead of --data).")
@click.option("--coco-images", type=input_type("dir"), help="Folder of the COCO images.")
@click.option("--coco-captions", type=input_type(),
              help="COCO captions JSON: objects its captions mention join the ground truth (as CHAIR's reference).")
@click.option("--n", "n_images", type=POSITIVE_INT, help="Use this many images (COCO: sampled with --seed).")
@steer_options
@click.option("--split", type=CheckedChoice(["random", "popular", "adversarial"]), default="adversarial",
              show_default=True, help="POPE negative sampling.")
@click.option("--vocabulary", type=CheckedChoice(["coco", "coco-legacy", "scenes"]),
              help="CHAIR objects: coco is CHAIR's published list, coco-legacy polysteer's earlier one "
                   "(default: by data).")
@prompt_option
@max_new_tokens_option(64, help="Caption length (POPE answers use 4).")
@seed_option()
@output_option(required=False, help="Write the results (and captions/answers) as JSON.")
def eval_command(metric, model_name, device, dtype, data, coco_annotations, coco_images, coco_captions, n_images,
                 direction, alpha_vision, alpha_text, force, split, vocabulary, prompt, max_new_tokens, seed, output):
    """CHAIR or POPE on a dataset, unsteered and (with -d) steered too."""
    from polysteer.modalities.vision_language.workflow import direction_plan, load_vlm

    _check_steering(direction, alpha_vision, alpha_text)
    samples, default_vocabulary = _eval_samples(data, coco_annotations, coco_images, n_images, seed, coco_captions)
    model, processor = load_vlm(model_name, device, dtype)
    plans = {"unsteered": None}
    if direction:
        plans["steered"] = direction_plan(model, direction, alpha_vision, alpha_text, force)
    results = {}
    for label, plan in plans.items():
        results[label] = _evaluate(metric, model, processor, samples, plan, vocabulary or default_vocabulary, split,
                                   prompt, max_new_tokens, seed)
        summary = {k: v for k, v in results[label].items() if not isinstance(v, list)}
        click.echo(f"{label}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                            for k, v in summary.items()))
    if output:
        _write_json(Path(output), results)


def _open_image(path: str):
    """An image file as RGB, or a one-line error naming it."""
    from PIL import UnidentifiedImageError

    from polysteer.modalities.vision_language.dataset import Sample

    try:
        return Sample(path).load_image()
    except UnidentifiedImageError:
        raise PolysteerError(f"cannot read {path}: not an image format PIL can open") from None
    except OSError as exc:
        raise PolysteerError(f"cannot read image {path}: {exc.strerror or exc}") from None


def _eval_samples(data, annotations, images, n, seed, captions=None):
    from polysteer.modalities.vision_language.coco import read_coco
    from polysteer.modalities.vision_language.dataset import Sample, load_samples

    if bool(annotations) != bool(images):
        raise PolysteerError("--coco-annotations and --coco-images go together (the instances JSON and its images)")
    if captions and not annotations:
        raise PolysteerError("--coco-captions adds to the COCO ground truth: give --coco-annotations and --coco-images")
    if annotations:
        rows = read_coco(annotations, images, n, seed, captions)
        return [Sample(r["image"], r["objects"]) for r in rows], "coco"
    samples = load_samples(data)
    return samples[:n] if n else samples, "scenes" if data.startswith("scenes:") else "coco"


def _evaluate(metric, model, processor, samples, plan, vocabulary, split, prompt, max_new_tokens, seed) -> dict:
    from polysteer.modalities.vision_language.evaluation import run_chair, run_pope
    from polysteer.modalities.vision_language.generation import DESCRIBE_PROMPT

    if metric == "chair":
        result = run_chair(model, processor, samples, plan, vocabulary, prompt or DESCRIBE_PROMPT, max_new_tokens)
        return asdict(result)
    run = run_pope(model, processor, samples, split, plan, seed=seed)
    return {**asdict(run.result), "split": split, "answers": [
        {"image": q.image, "object": q.object, "present": q.present, "answer": a}
        for q, a in zip(run.questions, run.answers)]}


def _write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2))
