"""The command-line options every command group shares: one spelling, one parser and one help text each.

Text, music, vision-language and SAE commands all take ``--model``, ``--device``, ``--dtype``,
``-d/--direction FILE[@COEF]``, ``--layers``, ``--coef``, ``--coefs``, ``-o/--output``, ``--finder``,
``--operator``, ``--schedule``, ``--site``, ``--max-new-tokens`` and ``--seed`` from here; counts, sizes and
probabilities use the checked types of :mod:`polysteer.option_types`. Bad values raise
:class:`~polysteer.errors.PolysteerError` while the command line is parsed, so ``polysteer`` prints one
``Error:`` line before any model loads.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import click

from polysteer.errors import PolysteerError
from polysteer.hookpoints import LAYER_SPEC_HELP, SITES, parse_layer_spec, parse_layers
from polysteer.option_types import (
    POSITIVE_INT,
    SEED,
    CheckedChoice,
    Parsed,
    check_schedule,
    output_type,
    registered_type,
)

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
DEVICE_HELP = ("Where the model runs: auto (CUDA, then MPS, else CPU), cpu, cuda, cuda:N, mps, or map (text and "
               "vision-language models larger than one GPU: spread over every GPU, then CPU, by accelerate).")
DTYPE_HELP = "Weight precision; auto is bfloat16 on a GPU and float32 on CPU."
COEFS_HELP = ("Comma-separated coefficients, e.g. 0,0.1,0.2,0.4 (for a found direction: fractions of the typical "
              "activation norm).")

OVERWRITE_HELP = {  # the one rule for every command that writes, by what -o names
    "file": "An existing file there is replaced (atomically: a failed run leaves it as it was).",
    "dir": "Files of the same names in it are replaced (atomically: a failed run leaves them as they were).",
    "file-or-dir": "Existing files are replaced (atomically: a failed run leaves them as they were).",
}

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def parse_coef(text: str, option: str = "--coef") -> float:
    """A finite float; anything else (``nan``, ``inf``, ``abc``) is a PolysteerError.

    Args:
        text: the value as typed.
        option: the flag named in the error message.
    """
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise PolysteerError(f"bad {option} {text!r}: give a number, e.g. {option} 4") from None
    if not math.isfinite(value):
        raise PolysteerError(f"bad {option} {text!r}: the coefficient must be a finite number, e.g. {option} 4")
    return value


def parse_coefs(text: str, option: str = "--coefs") -> list[float]:
    """Finite floats from a comma-separated list such as ``'0,1,2,4'``; an empty item, ``nan``, ``inf`` or
    anything that is not a number is a PolysteerError.

    Args:
        text: the list as typed.
        option: the flag named in the error message.
    """
    parts = [part.strip() for part in str(text).split(",")]
    if not all(parts):
        raise PolysteerError(f"bad {option} {text!r}: give comma-separated numbers, e.g. {option} 0,1,2,4")
    values = []
    for part in parts:
        try:
            values.append(parse_coef(part, option))
        except PolysteerError:
            raise PolysteerError(f"bad {option} {text!r}: {part!r} is not a finite number; give comma-separated "
                                 f"numbers, e.g. {option} 0,1,2,4") from None
    return values


def parse_direction_spec(text: str) -> tuple[str, float | None]:
    """``FILE`` or ``FILE@COEF`` as ``(path, coefficient or None)``; a coefficient that is not a finite number is
    a PolysteerError.

    A path that exists as written is taken whole, so a file whose name holds an ``@`` still loads.

    >>> parse_direction_spec("ocean.safetensors@4")
    ('ocean.safetensors', 4.0)
    """
    text = str(text)
    if not text:
        raise PolysteerError("empty --direction: give a direction FILE or FILE@COEF, e.g. -d ocean.safetensors@4")
    path, sep, coef = text.rpartition("@")
    if not sep or Path(text).exists():
        return text, None
    if not path:
        raise PolysteerError(f"bad --direction {text!r}: give FILE@COEF with the file first, e.g. -d v.safetensors@4")
    try:
        return path, parse_coef(coef)
    except PolysteerError:
        raise PolysteerError(f"bad --direction {text!r}: {coef!r} is not a finite coefficient; "
                             f"write FILE@COEF with a number, e.g. {path}@4") from None


def _check_device(text: str, option: str) -> str:
    from polysteer.device import resolve_device

    resolve_device(text)
    return text


def _check_layers(text: str, option: str) -> str:
    try:
        parse_layer_spec(text)
    except PolysteerError as exc:
        raise PolysteerError(f"{option}: {exc}") from None
    return text


def _direction(with_coef: bool, coef_hint: str) -> Callable[[str, str], Any]:
    def parse(text: str, option: str):
        path, coef = parse_direction_spec(text)
        if not Path(path).is_file():
            raise PolysteerError(f"direction file {path} does not exist; give an existing FILE or FILE@COEF")
        if with_coef:
            return path, coef
        if coef is not None:
            raise PolysteerError(f"{option} takes a FILE without @COEF here: {coef_hint}")
        return path

    return parse


def combine(*decorators: Decorator) -> Decorator:
    """Apply several option decorators in the order listed (the first one shows first in ``--help``)."""

    def decorate(fn):
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn

    return decorate


def model_option(default: str | None = None, required: bool = False,
                 help: str = "Model: a local folder or hub id.") -> Decorator:
    """``--model NAME`` (parameter ``model_name``).

    Args:
        default: the model a command uses without ``--model`` (text commands: ``smollm2``).
        required: the command needs ``--model`` (music find, vlm).
        help: what the model name may be in this modality.
    """
    return click.option("--model", "model_name", default=default, required=required, show_default=default is not None,
                        help=help)


def device_option() -> Decorator:
    """``--device`` (default ``auto``), checked to exist before any model loads."""
    return click.option("--device", default="auto", show_default=True, type=Parsed("device", _check_device),
                        help=DEVICE_HELP)


def dtype_option() -> Decorator:
    """``--dtype`` (default ``auto``): one of :data:`DTYPE_CHOICES`."""
    return click.option("--dtype", default="auto", show_default=True, type=CheckedChoice(DTYPE_CHOICES),
                        help=DTYPE_HELP)


def model_options(default: str | None = None, required: bool = False,
                  help: str = "Model: a local folder or hub id.") -> Decorator:
    """``--model``, ``--device`` and ``--dtype``: what every command that loads a model takes.

    The command receives ``model_name``, ``device`` and ``dtype`` and passes the last two to its loader, which
    resolves them with :func:`polysteer.device.resolve_device` and :func:`~polysteer.device.resolve_dtype`.
    Arguments as for :func:`model_option`.
    """
    return combine(model_option(default, required, help), device_option(), dtype_option())


def direction_option(multiple: bool = False, required: bool = False, with_coef: bool = True,
                     coef_hint: str = "give the coefficient with --coef", help: str | None = None) -> Decorator:
    """``-d/--direction FILE[@COEF]``, checked to exist before any model loads.

    Args:
        multiple: repeatable; the parameter is then ``directions`` (a tuple), else ``direction``.
        required: the command needs one.
        with_coef: values are ``(path, coef or None)``; without it a bare path, and ``@COEF`` is refused.
        coef_hint: the fix named when ``@COEF`` is refused, e.g. ``"sweep coefficients with --coefs"``.
        help: what the direction does in this command.
    """
    spec = "FILE[@COEF]" if with_coef else "FILE"
    about = help or ("Direction file, FILE@COEF for its own coefficient" + ("; repeatable." if multiple else "."))
    return click.option("-d", "--direction", "directions" if multiple else "direction", multiple=multiple,
                        required=required, metavar=spec, type=Parsed("direction", _direction(with_coef, coef_hint)),
                        help=about)


def layers_option(name: str = "--layers", default: str | None = None, help: str = "") -> Decorator:
    """A layer spec (``'12'``, ``'8,12,16'``, ``'8-12'``, ``'all'``), syntax-checked before any model loads.

    The value stays a string: :func:`resolve_layers` or :func:`polysteer.hookpoints.parse_layers` checks it
    against the model's depth once the model is loaded.

    Args:
        name: the flag (``--layers``; ``--vision-layers`` / ``--text-layers`` for two towers).
        default: the spec without the flag; None lets the command choose.
        help: what the command does with the layers, after the shared syntax help.
    """
    text = f"Blocks: {LAYER_SPEC_HELP}." + (f" {help}" if help else "")
    return click.option(name, default=default, show_default=default is not None, metavar="SPEC",
                        type=Parsed("layers", _check_layers), help=text)


def resolve_layers(spec: str | None, n_layers: int) -> list[int] | None:
    """None without a spec (the command's own default), else the blocks it names, checked against ``n_layers``."""
    return None if spec is None else parse_layers(spec, n_layers)


def coef_option(default: float | None = None, help: str = "Steering coefficient.") -> Decorator:
    """``--coef`` (parameter ``coef``): one finite float.

    Args:
        default: the value without the flag; None usually means the direction file's own coefficient.
        help: what the coefficient does in this command.
    """
    return click.option("--coef", default=default, show_default=default is not None, metavar="FLOAT",
                        type=Parsed("coef", parse_coef), help=help)


def coefs_option(default: str = "0,1,2,4,6") -> Decorator:
    """``--coefs`` (parameter ``coefs``): a list of finite floats parsed by :func:`parse_coefs`.

    Args:
        default: the list without the flag, as typed.
    """
    return click.option("--coefs", default=default, show_default=True, metavar="LIST",
                        type=Parsed("coefs", parse_coefs), help=COEFS_HELP)


def output_option(kind: str = "file", required: bool = True, help: str = "") -> Decorator:
    """``-o/--output PATH`` (parameter ``output``), checked by :func:`polysteer.option_types.check_output_path`
    before any model loads.

    An existing output is replaced, as ``cp`` or ``gcc -o`` would, and atomically (see :mod:`polysteer.io`);
    ``--force`` keeps its one meaning everywhere, using a direction made on another model.

    Args:
        kind: ``file``, ``dir`` (e.g. ``sweep -o FOLDER``) or ``file-or-dir`` (the command checks which).
        required: the command needs it.
        help: what is written there.
    """
    about = (help or ("Folder to write." if kind == "dir" else "File to write.")) + " " + OVERWRITE_HELP[kind]
    return click.option("-o", "--output", "output", required=required, metavar="FOLDER" if kind == "dir" else "PATH",
                        type=output_type(kind), help=about)


def finder_option(default: str | None = "diffmean", help: str = "Registered direction-finder name.") -> Decorator:
    """``--finder NAME`` (parameter ``finder``), checked against the plugin registry before any model loads."""
    return click.option("--finder", default=default, show_default=default is not None, metavar="NAME",
                        type=registered_type("direction_finders"), help=help)


def parse_finder_param(text: str, option: str = "--finder-param") -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as JSON when it parses (numbers, true/false, lists), else as a string."""
    import json

    key, sep, raw = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise PolysteerError(f"{option} takes KEY=VALUE (e.g. trim=0.2), got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    if isinstance(value, float) and not math.isfinite(value):
        raise PolysteerError(f"{option} {key.strip()} must be a finite number, got {raw!r}")
    return key.strip(), value


def finder_param_option() -> Decorator:
    """``--finder-param KEY=VALUE`` (repeatable; parameter ``finder_params``, a dict) for the finder's ``__init__``."""

    def to_dict(ctx, param, values):
        return dict(values)

    return click.option("--finder-param", "finder_params", multiple=True, metavar="KEY=VALUE",
                        type=Parsed("KEY=VALUE", parse_finder_param), callback=to_dict,
                        help="A parameter of the finder, repeatable (e.g. --finder-param trim=0.2); "
                             "`polysteer plugins` lists the finders.")


def operator_option(default: str | None = None, help: str = "Registered operator name.") -> Decorator:
    """``--operator NAME`` (parameter ``operator``), checked against the plugin registry."""
    return click.option("--operator", default=default, show_default=default is not None, metavar="NAME",
                        type=registered_type("operators"), help=help)


def schedule_option(multiple: bool = False, steps_per_second: float | None = None, help: str = "",
                    default: str | None = None) -> Decorator:
    """``--schedule SPEC`` (parameter ``schedule``, or ``schedules`` when repeatable), parsed to check it.

    Args:
        multiple: repeatable (one schedule per direction).
        steps_per_second: the modality's frame rate, so specs in seconds (``ramp:5s-15s``) parse.
        help: what the schedule applies to.
        default: the spec used when the option is not given (None: the command's own).
    """
    parse = Parsed("schedule", lambda text, option: check_schedule(text, option, steps_per_second))
    return click.option("--schedule", "schedules" if multiple else "schedule", multiple=multiple, metavar="SPEC",
                        type=parse, default=default, show_default=default is not None,
                        help=help or "e.g. constant, generated-only, window:0-20, ramp:0-10.")


def site_option(default: str = "resid_post") -> Decorator:
    """``--site`` (parameter ``site``): where in a block to read or steer, one of the shared hook-point sites."""
    return click.option("--site", default=default, show_default=True, type=CheckedChoice(SITES),
                        help="Where in each block.")


def max_new_tokens_option(default: int, help: str = "Tokens to generate per prompt.") -> Decorator:
    """``--max-new-tokens N`` (>= 1)."""
    return click.option("--max-new-tokens", default=default, show_default=True, type=POSITIVE_INT, help=help)


def seed_option(default: int = 0) -> Decorator:
    """``--seed N`` (an integer in [0, 2**32 - 1], as numpy and torch take it)."""
    return click.option("--seed", default=default, show_default=True, type=SEED, help="Random seed.")
