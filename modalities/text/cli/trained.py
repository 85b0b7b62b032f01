"""``polysteer train-vector``: learn a steering vector through the model and write a Direction file."""

from __future__ import annotations

import click

from polysteer.data import read_lines
from polysteer.errors import PolysteerError
from polysteer.modalities.text.cli import text_model_options
from polysteer.modalities.text.modality import TextModality
from polysteer.modalities.text.models import load_text_model
from polysteer.modalities.text.presets import PERSONAS, TRAIN_QUESTIONS, PersonaPair
from polysteer.options import layers_option


def keyword_reward(keywords: list[str]):
    """A reward function: 1.0 for a completion that mentions a keyword, else 0.0."""
    from polysteer.modalities.text.evaluators.judges import KeywordJudge

    return KeywordJudge(keywords).evaluate


def _persona(spec: str) -> PersonaPair:
    from polysteer.modalities.text.cli.main import _persona_pair

    return _persona_pair(spec, PersonaPair)


def _training_rows(model, tokenizer, data, persona, questions, objective):
    """Rows and a provenance record from ``--data`` or ``--persona``."""
    from polysteer.modalities.text.trained.data import read_rows, rows_from_examples
    from polysteer.modalities.text.workflow import persona_data

    if bool(data) == bool(persona):
        raise PolysteerError("give exactly one of --data FILE (JSONL of prompt/target/contrast) or --persona NAME")
    if data:
        return read_rows(data), {"data": str(data)}, None
    pair = _persona(persona)
    qs = read_lines(questions) if questions else list(TRAIN_QUESTIONS)
    source = {"persona_positive": pair.positive, "persona_negative": pair.negative, "n_questions": len(qs)}
    if objective == "reward":
        return qs, source, pair
    return rows_from_examples(*persona_data(model, tokenizer, pair, qs)), source, pair


@click.command(name="train-vector")
@text_model_options
@click.option("--data", type=click.Path(), help='JSONL of {"prompt", "target", "contrast"} rows.')
@click.option("--persona", help=f"Built-in persona pair ({', '.join(PERSONAS)}) or 'POSITIVE|NEGATIVE'.")
@click.option("--questions", type=click.Path(), help="Questions for persona answers / reward prompts.")
@click.option("--objective", type=click.Choice(["supervised", "reward"]), default="supervised", show_default=True)
@click.option("--reward-keywords", help="Reward: 1 if a sampled completion mentions one (default: the persona's).")
@layers_option(help="Default: 40% of the depth.")
@click.option("--site", default="resid_post", show_default=True)
@click.option("--steps", default=200, show_default=True)
@click.option("--lr", default=1e-2, show_default=True)
@click.option("--batch-size", default=8, show_default=True)
@click.option("--contrast-weight", default=1.0, show_default=True, help="Weight of the bounded contrast term.")
@click.option("--gate", is_flag=True, help="Learn a token-wise gate sigmoid(w.h+b) (applied by gated_add).")
@click.option("--max-norm", type=float, help="Keep the vector inside this L2 ball.")
@click.option("--l2", default=0.0, show_default=True, help="Weight of an ||v||^2 penalty.")
@click.option("--patience", default=5, show_default=True, help="Evaluations without improvement before stopping.")
@click.option("--eval-every", default=10, show_default=True)
@click.option("--num-samples", default=4, show_default=True, help="Reward: completions sampled per prompt.")
@click.option("--max-new-tokens", default=32, show_default=True, help="Reward: length of sampled completions.")
@click.option("--seed", default=0, show_default=True)
@click.option("-o", "--output", required=True, type=click.Path(), help="Direction file to write (.safetensors).")
def train_vector(model_name, device, dtype, data, persona, questions, objective, reward_keywords, output, **params):
    """Learn a steering vector by gradient descent through the frozen model (supervised or REINFORCE)."""
    from polysteer.finder import make_finder

    model, tokenizer = load_text_model(model_name, device, dtype)
    rows, source, pair = _training_rows(model, tokenizer, data, persona, questions, objective)
    reward = None
    if objective == "reward":
        keywords = reward_keywords.split(",") if reward_keywords else list(pair.keywords if pair else [])
        if not keywords:
            raise PolysteerError("the reward objective needs --reward-keywords a,b,c (or a built-in --persona)")
        reward, source = keyword_reward(keywords), {**source, "reward_keywords": keywords}
    finder = make_finder("trained", objective=objective, reward=reward, **params)
    finder.fit_model(model, tokenizer, rows)
    direction = finder.to_direction(model, TextModality(), provenance={**source, "n_rows": len(rows)})
    direction.save(output)
    label, sign = ("held-out reward", -1) if objective == "reward" else ("held-out loss", 1)
    click.echo(f"{label} {sign * finder.baseline_:.4f} -> {sign * finder.best_monitor_:.4f} after "
               f"{finder.n_steps_} steps" + (" (stopped early)" if finder.stopped_early_ else ""))
    norms = ", ".join(f"{hp} |v|={direction.scales[hp]:.3f}" for hp in direction.hook_points)
    click.echo(f"wrote {output}: trained ({objective}{', gated' if params['gate'] else ''}) at {norms}")
