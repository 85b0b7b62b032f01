"""``polysteer tune``: choose a direction's layer, strength and schedule on held-out instructions, write them in."""

from __future__ import annotations

import json
from pathlib import Path

import click

from polysteer.data import read_lines
from polysteer.direction import Direction
from polysteer.errors import PolysteerError
from polysteer.io import atomic_write, write_text_atomic
from polysteer.modalities.text.cli import text_model_options
from polysteer.modalities.text.modality import TextModality
from polysteer.modalities.text.models import load_text_model
from polysteer.modalities.text.presets import EVAL_PROMPTS
from polysteer.modalities.text.tune import PARTS, TuneResult, split_instructions, tune_direction, tuned
from polysteer.option_types import input_type, words_type
from polysteer.options import coefs_option, direction_option, max_new_tokens_option, output_option
from polysteer.schedule import parse_schedule


@click.command()
@text_model_options
@direction_option(required=True, with_coef=False, coef_hint="tune chooses the coefficient; list candidates "
                  "with --coefs", help="Direction file to tune.")
@click.option("--concept", required=True, help="What the steered text should be about (the concept judge's text).")
@click.option("--prompts-file", type=input_type(), help="Instructions, one per line; alternate lines choose and "
              "report (default: 20 built-in neutral prompts).")
@coefs_option("0.05,0.1,0.2,0.3,0.5")
@click.option("--schedules", type=words_type, default="constant,generated-only", show_default=True,
              help="Comma-separated schedules to try.")
@max_new_tokens_option(32)
@click.option("--force", is_flag=True, help="Use a direction made for another model configuration.")
@output_option("file", help="The tuned direction (.safetensors); tune.md, tune.json and tune.png go beside it.")
def tune(model_name, device, dtype, direction, concept, prompts_file, coefs, schedules, max_new_tokens, force,
         output):
    """Pick hook point(s), coefficient and schedule on half the instructions with the AxBench judges, report the
    choice on the other half against the file's defaults, and save the direction with the choice as defaults."""
    for spec in schedules:
        parse_schedule(spec)
    prompts = read_lines(prompts_file, "prompts") if prompts_file else list(EVAL_PROMPTS)
    split_instructions(prompts)
    if not Path(str(output)).name.endswith(".safetensors"):
        raise PolysteerError(f"-o {output}: the tuned direction is a .safetensors file; name it so")
    original = Direction.load(direction)
    if original.modality != "text":
        raise PolysteerError(f"{direction} is a {original.modality} direction; tune steers text models")
    model, tokenizer = load_text_model(model_name, device, dtype)
    modality = TextModality()
    original.check_model(modality.identity(model), modality.d_model(model, original.hook_points[0]), force)
    result = tune_direction(model, tokenizer, original, concept, prompts, coefs, schedules, max_new_tokens)
    out = Path(output)
    tuned(original, result).save(out)
    stem = out.with_suffix("")
    write_text_atomic(stem.with_name(stem.name + ".tune.json"), json.dumps(_as_json(result), indent=1))
    write_text_atomic(stem.with_name(stem.name + ".tune.md"), _markdown(result, direction, concept, len(prompts)))
    _pareto(result, stem.with_name(stem.name + ".tune.png"))
    click.echo(_report_table(result))
    click.echo(f"wrote {out} (defaults: {_label(result.chosen)}) and its .tune.md/.tune.json/.tune.png")


def _label(c) -> str:
    where = "all layers" if c.hook_points == "all" else c.hook_points
    return f"{where}, coefficient {c.coefficient:g}, {c.schedule}"


def _report_table(result: TuneResult) -> str:
    head = "| report half | " + " | ".join(PARTS) + " |\n|---|" + "---|" * len(PARTS)
    rows = [f"| {name} | " + " | ".join(f"{means[k]:.3f}" for k in PARTS) + " |"
            for name, means in result.report.items()]
    return "\n".join([head, *rows])


def _markdown(result: TuneResult, path: str, concept: str, n_prompts: int) -> str:
    cands = sorted(result.selection.items(), key=lambda item: -item[1]["score"])
    rows = [f"| {c.hook_points} | {c.coefficient:g} | {c.schedule} | " +
            " | ".join(f"{m[k]:.3f}" for k in PARTS) + " |" for c, m in cands]
    return "\n".join([
        f"# polysteer tune: `{Path(path).name}` for '{concept}'", "",
        f"{n_prompts} instructions, alternately for choosing (selection) and reporting. Judges 0-2 (AxBench rule: "
        "score = harmonic mean, 0 if any part is 0). Chosen: **" + _label(result.chosen) + "**.", "",
        "## Report half (never seen by the choice)", "", _report_table(result), "",
        "## Selection half, every candidate", "",
        "| hook points | coefficient | schedule | " + " | ".join(PARTS) + " |", "|---|---|---|" + "---|" * len(PARTS),
        *rows, "", "![pareto](" + Path(path).stem + ".tune.png)", ""])


def _as_json(result: TuneResult) -> dict:
    return {"chosen": vars(result.chosen), "report": result.report, "samples": result.samples,
            "selection": [{**vars(c), **m} for c, m in result.selection.items()]}


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (fluency, concept) points no other point beats on both, sorted; candidates that tie share one point."""
    unique = set(points)
    return sorted(p for p in unique if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in unique))


def _pareto(result: TuneResult, path: Path) -> None:
    """Concept vs fluency of every candidate on the selection half; the Pareto front joined, the choice starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(m["fluency"], m["concept"]) for m in result.selection.values()]
    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.scatter([p[0] for p in points], [p[1] for p in points], s=18, color="0.6", label="candidates")
    ax.plot([p[0] for p in front], [p[1] for p in front], color="C0", marker="o", label="Pareto front")
    best = result.selection[result.chosen]
    ax.scatter([best["fluency"]], [best["concept"]], marker="*", s=220, color="C3", label=_label(result.chosen))
    ax.set_xlabel("fluency (0-2, selection half)")
    ax.set_ylabel("concept (0-2, selection half)")
    ax.set_title("polysteer tune: concept vs fluency per candidate")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
