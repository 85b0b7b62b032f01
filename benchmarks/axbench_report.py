"""The tables, plot and README of ``benchmarks/axbench_lite.py``: means with bootstrap intervals, paired differences
against prompting, the concept judge's agreement with keyword labels, the SAE comparison and detection AUROC."""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
from pathlib import Path

import torch
from common import markdown
from power_stats import bootstrap_ci, judge_agreement, paired_bootstrap_ci, signed_ci, with_ci

from polysteer import atomic_write, write_text_atomic
from polysteer.modalities.text.evaluators import KeywordJudge

SAE_METHODS = ("sae", "sae_filtered")
PROMPTING = ("prompt_system", "prompt_appended")
PARTS = ("score", "concept", "instruction", "fluency")
BASELINE = "prompt_appended"


def mean(rows: list[dict], field: str) -> float:
    return statistics.mean(r[field] for r in rows) if rows else float("nan")


def label(method: str, hp: str) -> str:
    return method if hp == "-" else f"{method}@L{hp.split('.')[2]}"


def _groups(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Rows per (method, hook point), in first-seen order."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["hook_point"]), []).append(r)
    return groups


def summary(report: list[dict], aurocs: dict, chosen: dict) -> list[dict]:
    """One row per (method, hook point): report-half means, median chosen factor, mean detection AUROC."""
    table = []
    for (method, hp), rows in _groups(report).items():
        aucs = [a for (_, m, h), a in aurocs.items() if (m, h) == (method, hp)]
        factors = [f for (_, m, h), f in chosen.items() if (m, h) == (method, hp)]
        table.append({"method": method, "layer": hp.split(".")[2] if hp != "-" else "-",
                      **{part: mean(rows, part) for part in PARTS},
                      "factor": f"{statistics.median(factors):g}" if factors else "-",
                      "AUROC": f"{statistics.mean(aucs):.3f}" if aucs else "-", "n": len(rows)})
    return sorted(table, key=lambda t: -t["score"])


def selection_scores(selection: list[dict], chosen: dict) -> dict[tuple[str, str], float]:
    """Per (method, hook point): the selection-half score at each concept's chosen factor, averaged over concepts."""
    at_choice: dict[tuple, list[float]] = {}
    for r in selection:
        if chosen[r["name"], r["method"], r["hook_point"]] == r["factor"]:
            at_choice.setdefault((r["method"], r["hook_point"], r["name"]), []).append(r["score"])
    per_row: dict[tuple, list[float]] = {}
    for (method, hp, _), scores in at_choice.items():
        per_row.setdefault((method, hp), []).append(statistics.mean(scores))
    return {k: statistics.mean(v) for k, v in per_row.items()}


def intervals(report: list[dict]) -> dict[str, dict[str, tuple[float, float, float]]]:
    """Per row label, each part's ``(mean, low, high)``: a bootstrap over that row's (concept, instruction) samples."""
    return {label(*k): {part: bootstrap_ci([r[part] for r in rows]) for part in PARTS}
            for k, rows in _groups(report).items()}


def interval_table(table: list[dict], cis: dict) -> list[dict]:
    """The summary with every score written as ``mean [low, high]``."""
    out = []
    for t in table:
        name = t["method"] if t["layer"] == "-" else f"{t['method']}@L{t['layer']}"
        out.append({"method": name, "n": t["n"], **{p: with_ci(*cis[name][p]) for p in PARTS},
                    "factor": t["factor"], "AUROC": t["AUROC"]})
    return out


def differences(report: list[dict], first: list[str]) -> dict[str, tuple[float, float, float]]:
    """Each row's score minus prompt_appended's, paired on (concept, instruction); the labels in ``first`` lead."""
    by_sample = {label(*k): {(r["name"], r["task"]): r["score"] for r in rows}
                 for k, rows in _groups(report).items()}
    if BASELINE not in by_sample:
        return {}
    order = [x for x in first if x in by_sample] + [x for x in by_sample if x not in first]
    return {name: paired_bootstrap_ci(by_sample[name], by_sample[BASELINE]) for name in order if name != BASELINE}


def difference_table(diffs: dict, notes: dict[str, str]) -> list[dict]:
    return [{"row": name, f"score - {BASELINE}": signed_ci(*d), "interval excludes 0": "yes" if d[1] > 0 or d[2] < 0
             else "no", "note": notes.get(name, "")} for name, d in diffs.items()]


def agreement(report: list[dict], suite) -> tuple[dict, list[dict]]:
    """The 0-2 concept judge against the concept's keywords on every report output: overall and per row."""
    judges = {c.name: KeywordJudge(c.keywords) for c in suite.concepts}
    for r in report:
        r["keyword"] = bool(judges[r["name"]].evaluate([r["text"]])[0])
    overall = judge_agreement([r["concept"] for r in report], [r["keyword"] for r in report])
    per_row = []
    for k, rows in _groups(report).items():
        a = judge_agreement([r["concept"] for r in rows], [r["keyword"] for r in rows])
        per_row.append({"row": label(*k), "n": a["n"],
                        "judge > 0": statistics.mean(float(r["concept"] > 0) for r in rows),
                        "keyword hit": statistics.mean(float(r["keyword"]) for r in rows),
                        "accuracy": a["accuracy"], "kappa": a["kappa"]})
    return overall, per_row


def agreement_text(overall: dict, per_row: list[dict]) -> list[str]:
    confusion = [{"concept judge": s, "keyword hit": c["yes"], "no keyword": c["no"]}
                 for s, c in overall["confusion"].items()]
    return ["## Concept judge vs keyword labels (every report output)\n",
            f"The keyword label is a hit of any of the concept's 16-18 keywords (`KeywordJudge`: whole word, optional "
            f"plural). n = {overall['n']}: accuracy of (judge > 0) vs keyword hit {overall['accuracy']:.3f}, Cohen's "
            f"kappa {overall['kappa']:.3f}. Keywords are a noisy label (tone concepts rarely name their keyword; "
            "common words such as `space` or `team` hit off-concept), so this bounds, not measures, the judge's "
            "error. Per row below, kappa is nan where judge and keywords both give one label only. Against 120 "
            "outputs labelled by a reader blind to method and scores: [hand_labels.md](hand_labels.md) "
            "(`benchmarks/judge_hand_labels.py`).\n",
            markdown(confusion, list(confusion[0])), markdown(per_row, list(per_row[0]))]


def per_concept(report: list[dict], columns: list[tuple[str, str]]) -> list[dict]:
    """Report-half score per concept for each (method, hook point)."""
    table = []
    for name in dict.fromkeys(r["name"] for r in report):
        row = {"concept": name}
        for method, hp in columns:
            rows = [r for r in report if (r["name"], r["method"], r["hook_point"]) == (name, method, hp)]
            row[label(method, hp)] = mean(rows, "score")
        table.append(row)
    return table


def auroc_table(aurocs: dict) -> tuple[list[dict], list[str]]:
    """Detection AUROC per concept (rows) and (method, layer) (columns), with a mean row."""
    columns = [label(m, hp) for m, hp in dict.fromkeys((m, hp) for _, m, hp in aurocs)]
    table = {}
    for (name, method, hp), value in aurocs.items():
        table.setdefault(name, {"concept": name})[label(method, hp)] = value
    rows = list(table.values())
    rows.append({"concept": "mean", **{c: statistics.mean(r[c] for r in rows) for c in columns}})
    return rows, ["concept"] + columns


def sae_comparison(selection: list[dict], report: list[dict], fitted: dict, hp: str) -> list[dict]:
    """Filtered vs unfiltered SAE feature per concept: features, report scores, best concept at fluency >= 1."""
    table = []
    for name in dict.fromkeys(r["name"] for r in report):
        if (name, "sae", hp) not in fitted or (name, "sae_filtered", hp) not in fitted:
            continue
        row = {"concept": name}
        for method in SAE_METHODS:
            rep = [r for r in report if (r["name"], r["method"], r["hook_point"]) == (name, method, hp)]
            sel = [r for r in selection if (r["name"], r["method"], r["hook_point"]) == (name, method, hp)]
            fluent = [mean(g, "concept") for g in _by_factor(sel).values() if mean(g, "fluency") >= 1.0]
            row |= {f"{method} feature": int(fitted[name, method, hp].features_[0]),
                    f"{method} score": mean(rep, "score"), f"{method} concept": mean(rep, "concept"),
                    f"{method} fluency": mean(rep, "fluency"),
                    f"{method} concept@fluency>=1": max(fluent) if fluent else 0.0}
        table.append(row)
    return table


def _by_factor(rows: list[dict]) -> dict[float, list[dict]]:
    groups: dict[float, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["factor"], []).append(r)
    return dict(sorted(groups.items()))


def factor_table(selection: list[dict]) -> list[dict]:
    """Selection-half means per (method, hook point) and factor: where each row's trade-off peaks."""
    return [{"row": label(*k), "factor": f"{f:g}", "n": len(g), **{part: f"{mean(g, part):.3f}" for part in PARTS}}
            for k, rows in _groups(selection).items() for f, g in _by_factor(rows).items()]


def pareto_plot(selection: list[dict], report: list[dict], path: Path) -> None:
    """Mean concept vs mean fluency per factor (selection half), one line per method and layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    for (method, hp), rows in _groups(selection).items():
        groups = _by_factor(rows)
        xs, ys = [mean(g, "fluency") for g in groups.values()], [mean(g, "concept") for g in groups.values()]
        ax.plot(xs, ys, marker="o", linestyle="-" if hp == selection[0]["hook_point"] else "--",
                label=label(method, hp))
        for f, x, y in zip(groups, xs, ys):
            ax.annotate(f"{f:g}", (x, y), fontsize=6)
    for method in ("unsteered", *PROMPTING):
        rows = [r for r in report if r["method"] == method]
        ax.scatter([mean(rows, "fluency")], [mean(rows, "concept")], marker="*", s=160, label=method, zorder=3)
    ax.set(xlabel="fluency (0-2)", ylabel="concept score (0-2)", xlim=(0, 2.05), ylim=(0, 2.05),
           title="AxBench-lite on SmolLM2-135M-Instruct: concept vs fluency (labels: factor)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def header(args, suite, table: list[dict], source: str | None, chosen_at: dict, seconds: float) -> str:
    threads = os.environ.get("OMP_NUM_THREADS")
    prefix = f"OMP_NUM_THREADS={threads} " if threads else ""
    command = prefix + ".venv/bin/python benchmarks/axbench_lite.py " + " ".join(sys.argv[1:])
    ordering = " > ".join(f"{t['method']}{'' if t['layer'] == '-' else '@L' + t['layer']} {t['score']:.3f}"
                          for t in table)
    counts = sorted({t["n"] for t in table})
    steer = (f" `prompt_steer` is `{BASELINE}`'s prompt plus the {source} direction (the best steering row on the "
             "selection half unless `--prompt-steer-method` named it), its factor chosen on the selection half with "
             "the prompt present. Selection-half score at the chosen factors: "
             + ", ".join(f"{label(*k)} {v:.3f}" for k, v in chosen_at.items() if k[0] != "prompt_steer") + "."
             if source else "")
    variants = (f" The `+VARIANT` rows ({', '.join(args.variants)}) try factors {args.variant_factors}."
                if getattr(args, "variants", None) else "")
    return (f"# AxBench-lite on SmolLM2-135M-Instruct\n\nCommand: `{command.strip()}` ({seconds / 60:.0f} min, "
            f"{torch.get_num_threads()} threads).\n\n{len(suite.concepts)} concepts; factors {args.factors} x class "
            f"separation; {args.selection} selection + {args.report} report instructions per concept, so n = "
            f"{' / '.join(map(str, counts))} report samples per method; {args.tokens} new tokens, greedy, generated "
            f"in {args.dtype}.{variants} Scores are 0-2 (AxBench rule: harmonic mean, 0 if any part is 0), each "
            "shown as `mean [95% CI]`: a percentile bootstrap (2,000 resamples, seed 0) over the row's (concept, "
            "instruction) samples, which treats samples as independent (instructions of one concept share its "
            "direction, so an interval over concepts would be wider); AUROC is concept detection on the held-out "
            f"texts.{steer}\n\n"
            f"Ordering: {ordering}\n")


def _no_nan(row: dict) -> dict:
    """An undefined kappa as JSON null rather than the non-standard NaN."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


def paired_section(report: list[dict], source: str | None) -> tuple[dict, list[str]]:
    """The paired differences against prompt_appended (the best steering row and prompt_steer first)."""
    steering = [label(*k) for k in _groups(report) if k[1] != "-" and k[0] != "prompt_steer"]
    both = next((label(*k) for k in _groups(report) if k[0] == "prompt_steer"), None)
    notes = {source: "best steering row on the selection half", both: f"{BASELINE}'s prompt + {source}"}
    diffs = differences(report, [n for n in (source, both) if n] + steering)
    if not diffs:
        return diffs, []
    paired = difference_table(diffs, notes)
    return diffs, [f"## Paired differences against {BASELINE}\n",
                   "Each row's score minus prompt_appended's on the same (concept, instruction) samples, with a "
                   "paired bootstrap 95% interval; where the interval excludes 0 the difference is unlikely to be "
                   "resampling noise (no correction for comparing many rows).\n", markdown(paired, list(paired[0]))]


def write_results(args, suite, selection, report, fitted, aurocs, chosen, seconds, source=None) -> None:
    """README.md, results.json and pareto.png in ``args.out``; ``source`` is prompt_steer's direction label."""
    args.out.mkdir(parents=True, exist_ok=True)
    table, cis = summary(report, aurocs, chosen), intervals(report)
    diffs, paired = paired_section(report, source)
    overall, per_row = agreement(report, suite)
    columns = list(dict.fromkeys((r["method"], r["hook_point"]) for r in report))
    sae = sae_comparison(selection, report, fitted, args.sae_hook_point)
    pareto_plot(selection, report, args.out / "pareto.png")
    rows = interval_table(table, cis)
    text = [header(args, suite, table, source, selection_scores(selection, chosen), seconds),
            "## Methods (report half, chosen factor)\n", markdown(rows, list(rows[0])), "![pareto](pareto.png)\n",
            *paired, "## Score per concept\n",
            markdown(per_concept(report, columns), ["concept"] + [label(*c) for c in columns])]
    factors = factor_table(selection)
    text += ["## Selection half, per factor\n", "What each factor gave on the selection instructions (the chosen "
             "factor is each concept's best score there; a `+VARIANT` row applies the best steering row's direction "
             "another way: `rotate` turns the activation and keeps its norm, `spread` adds a fifth at each of five "
             "layers around it, `generated` steers only generated tokens, `decay` fades linearly to 0 over the first "
             "32 steps, `spread-decay` adds a third at each of three blocks two apart and fades out over 20 steps, as "
             "`polysteer demo` does).\n", markdown(factors, list(factors[0]))]
    if sae:
        text += ["## SAE feature: output-score filtered vs unfiltered\n", markdown(sae, list(sae[0]))]
    text += agreement_text(overall, per_row)
    if aurocs:
        detection, detection_columns = auroc_table(aurocs)
        text += ["## Concept detection AUROC (held-out texts: 16 of the concept vs 48 neutral + 2 of every other "
                 "concept; token scores mean-pooled per text)\n", markdown(detection, detection_columns)]
    write_text_atomic(args.out / "README.md", "\n".join(text))
    write_text_atomic(args.out / "results.json", json.dumps(
        {"summary": table, "intervals": cis, "differences": diffs, "prompt_steer_source": source,
         "agreement": _no_nan(overall), "agreement_per_row": [_no_nan(r) for r in per_row], "sae": sae,
         "aurocs": {"|".join(k): v for k, v in aurocs.items()},
         "chosen": {"|".join(k): v for k, v in chosen.items()}, "report": report,
         "selection": [{k: v for k, v in r.items() if k != "text"} for r in selection]}, indent=1))
    print("\n".join(text))
