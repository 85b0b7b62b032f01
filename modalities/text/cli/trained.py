"""``polysteer train-vector``: learn a steering vector through the model and write a Direction file."""

from __future__ import annotations

import click

from polysteer.data import read_lines
from polysteer.errors import PolysteerError
from polysteer.modalities.text.cli import text_model_options
from polysteer.modalities.text.modality import TextModality
from polysteer.modalities.text.models import load_text_model
from polysteer.modalities.text.presets import PERSONAS, TRAIN_QUESTIONS, PersonaPair
from polysteer.option_types import (
    NONNEGATIVE_FLOAT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    CheckedChoice,
    input_type,
    words_type,
)
from polysteer.options import layers_option, max_new_tokens_option, output_option, seed_option, site_option


def keyword_reward(keywords: list[str]):
    """A reward function: 1.0 for a completion that mentions a keyword, else 0.0."""
    from polysteer.modalities.text.evaluators.judges import KeywordJudge

    return KeywordJudge(keywords).evaluate


def _persona(spec: str) -> PersonaPair:
    from polysteer.modalities.text.cli.main import _persona_pair

    return _persona_pair(spec, PersonaPair)


def _training_source(data, persona, questions):
    """Rows (from ``--data``) or persona questions, and a provenance record, read before the model loads."""
    from polysteer.modalities.text.trained.data import read_rows

    if bool(data) == bool(persona):
        raise PolysteerError("give exactly one of --data FILE (JSONL of prompt/target/contrast) or --persona NAME")
    if data:
        return read_rows(data), {"data": str(data)}, None
    pair = _persona(persona)
    qs = read_lines(questions, "questions") if questions else list(TRAIN_QUESTIONS)
    return qs, {"persona_positive": pair.positive, "persona_negative": pair.negative, "n_questions": len(qs)}, pair


def _preference(objective: str, preference: str | None, beta: float | None, margin: float | None) -> dict:
    """The finder's preference settings for ``--objective preference``; refuses them with another objective."""
    given = {"preference": preference, "beta": beta, "margin": margin}
    if objective != "preference":
        named = [f"--{k}" for k, v in given.items() if v is not None]
        if named:
            raise PolysteerError(f"{', '.join(named)} goes with --objective preference")
        return {}
    return {k: v for k, v in given.items() if v is not None}


def _reward(objective: str, reward_keywords: list[str] | None, pair: PersonaPair | None):
    """The reward function and its keywords for ``--objective reward``; ``(None, None)`` otherwise."""
    if objective != "reward":
        if reward_keywords:
            raise PolysteerError("--reward-keywords goes with --objective reward")
        return None, None
    keywords = reward_keywords or list(pair.keywords if pair else [])
    if not keywords:
        raise PolysteerError("the reward objective needs --reward-keywords a,b,c (or a built-in --persona)")
    return keyword_reward(keywords), keywords


@click.command(name="train-vector")
@text_model_options
@click.option("--data", type=input_type(), help='JSONL of {"prompt", "target", "contrast"} rows.')
@click.option("--persona", help=f"Built-in persona pair ({', '.join(PERSONAS)}) or 'POSITIVE|NEGATIVE'.")
@click.option("--questions", type=input_type(), help="Questions for persona answers / reward prompts.")
@click.option("--objective", type=CheckedChoice(["supervised", "reward", "preference"]), default="supervised",
              show_default=True, help="preference: +v prefers each row's target, -v its contrast (RePS or BiPO).")
@click.option("--preference", type=CheckedChoice(["reps", "bipo"]),
              help="Preference loss: reps (reference-free, SimPO-style; default) or bipo (DPO vs the unsteered model).")
@click.option("--beta", type=POSITIVE_FLOAT, help="Preference temperature (default 1.0 for reps, 0.1 for bipo).")
@click.option("--margin", type=NONNEGATIVE_FLOAT, help="RePS margin gamma (default 0).")
@click.option("--reward-keywords", type=words_type,
              help="Reward: 1 if a sampled completion mentions one (default: the persona's).")
@layers_option(help="Default: 40% of the depth.")
@site_option()
@click.option("--steps", default=200, show_default=True, type=POSITIVE_INT)
@click.option("--lr", default=1e-2, show_default=True, type=POSITIVE_FLOAT)
@click.option("--batch-size", default=8, show_default=True, type=POSITIVE_INT)
@click.option("--contrast-weight", default=1.0, show_default=True, type=NONNEGATIVE_FLOAT,
              help="Weight of the bounded contrast term.")
@click.option("--gate", is_flag=True, help="Learn a token-wise gate sigmoid(w.h+b) (applied by gated_add).")
@click.option("--max-norm", type=POSITIVE_FLOAT, help="Keep the vector inside this L2 ball.")
@click.option("--l2", default=0.0, show_default=True, type=NONNEGATIVE_FLOAT, help="Weight of an ||v||^2 penalty.")
@click.option("--patience", default=5, show_default=True, type=POSITIVE_INT,
              help="Evaluations without improvement before stopping.")
@click.option("--eval-every", default=10, show_default=True, type=POSITIVE_INT)
@click.option("--num-samples", default=4, show_default=True, type=POSITIVE_INT,
              help="Reward: completions sampled per prompt.")
@max_new_tokens_option(32, help="Reward: length of sampled completions.")
@seed_option()
@output_option(help="Direction file to write (.safetensors).")
def train_vector(model_name, device, dtype, data, persona, questions, objective, preference, beta, margin,
                 reward_keywords, output, **params):
    """Learn a steering vector by gradient descent through the frozen model (supervised, REINFORCE or preference)."""
    from polysteer.finder import make_finder
    from polysteer.modalities.text.trained.data import rows_from_examples
    from polysteer.modalities.text.workflow import persona_data

    rows, source, pair = _training_source(data, persona, questions)
    reward, keywords = _reward(objective, reward_keywords, pair)
    params.update(_preference(objective, preference, beta, margin))
    source = {**source, "reward_keywords": keywords} if keywords else source
    model, tokenizer = load_text_model(model_name, device, dtype)
    if pair is not None and objective != "reward":  # persona answers are written by the model itself
        rows = rows_from_examples(*persona_data(model, tokenizer, pair, rows))
    finder = make_finder("trained", objective=objective, reward=reward, **params)
    finder.fit_model(model, tokenizer, rows)
    direction = finder.to_direction(model, TextModality(), provenance={**source, "n_rows": len(rows)})
    direction.save(output)
    label, sign = ("held-out reward", -1) if objective == "reward" else ("held-out loss", 1)
    click.echo(f"{label} {sign * finder.baseline_:.4f} -> {sign * finder.best_monitor_:.4f} after "
               f"{finder.n_steps_} steps" + (" (stopped early)" if finder.stopped_early_ else ""))
    norms = ", ".join(f"{hp} |v|={direction.scales[hp]:.3f}" for hp in direction.hook_points)
    kind = params.get("preference", "reps") if objective == "preference" else objective
    click.echo(f"wrote {output}: trained ({kind}{', gated' if params['gate'] else ''}) at {norms}")
