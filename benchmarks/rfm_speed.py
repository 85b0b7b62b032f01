"""RFM speed and planted-direction recovery, with xRFM side by side when it is importable.

Data: a planted nonlinear concept ``y = 1[(x . v)^2 > median]``, so both classes have the same mean along
``v`` and a mean-difference finder cannot see it. "low-rank" data lives near a 32-dimensional subspace
of d = 576 (plus 0.1 isotropic noise), as activations concentrate on few directions; "isotropic" data is
standard normal in all d dimensions.

Usage (xRFM is optional and never a polysteer dependency; install it outside the project venv)::

    pip install --no-deps --target /tmp/xrfm_pkg xrfm==0.4.5
    PYTHONPATH=/tmp/xrfm_pkg OMP_NUM_THREADS=2 .venv/bin/python benchmarks/rfm_speed.py

Writes ``README.md`` (tables + the commands), ``rfm_speed.png`` and ``results.json`` to
``benchmarks/results/rfm/``. ``--part`` and ``--sizes`` split the work into shorter runs; each run merges
its rows into ``results.json``, and the README and plot always show every row measured so far.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from polysteer import atomic_write, make_finder, write_text_atomic  # noqa: E402

D, RANK, NOISE, N_TEST = 576, 32, 0.1, 2000


def planted(n: int, d: int, rank: int | None, seed: int):
    """``(X_pos, X_neg, v)`` for the quadratic concept; ``rank=None`` gives isotropic data."""
    g = torch.Generator().manual_seed(1000 + d + (rank or 0))  # the subspace and v depend on the task only
    basis = torch.linalg.qr(torch.randn(d, rank or d, generator=g, dtype=torch.float64))[0].float()
    v = basis[:, 0]
    g = torch.Generator().manual_seed(seed)
    if rank is None:
        X = torch.randn(n, d, generator=g)
    else:
        X = torch.randn(n, rank, generator=g) @ basis.T + NOISE * torch.randn(n, d, generator=g)
    y = (X @ v).pow(2) > 1.0  # (x . v) is about N(0, 1): 32% positives, same class means along v
    return X[y], X[~y], v


def test_auc(score, X_pos, X_neg) -> float:
    labels = [1] * len(X_pos) + [0] * len(X_neg)
    return float(roc_auc_score(labels, torch.cat([score(X_pos), score(X_neg)]).numpy()))


@functools.lru_cache(maxsize=None)
def fit_polysteer(name: str, params: tuple, n: int, d: int, rank: int | None) -> dict:
    """Fit a registered finder on a task (cached: the recovery table reuses the speed table's fits)."""
    return run_polysteer(name, dict(params), make_task(n, d, rank))


def run_polysteer(name: str, params: dict, task: dict) -> dict:
    t0 = time.perf_counter()
    finder = make_finder(name, **params).fit(task["X_pos"], task["X_neg"])
    seconds = time.perf_counter() - t0
    score = finder.decision_function if hasattr(finder, "decision_function") else finder.score
    return {"seconds": seconds, "rounds": len(getattr(finder, "val_aucs_", [])) or "-",
            "auc": test_auc(score, *task["test"]), "cos": abs(float(finder.direction_ @ task["v"]))}


def run_xrfm(task: dict, iters: int, seed: int = 0) -> dict:
    """xRFM's RFM with the same kernel (l2_high_dim = M-Laplace), bandwidth, ridge, rounds and early stop."""
    from xrfm.rfm_src import RFM as XRFM

    X = torch.cat([task["X_pos"], task["X_neg"]])
    y = torch.cat([torch.ones(len(task["X_pos"])), torch.zeros(len(task["X_neg"]))]).long()
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))
    n_val = len(X) // 5
    onehot = torch.nn.functional.one_hot(y, 2).float()
    val, train = perm[:n_val], perm[n_val:]
    t0 = time.perf_counter()
    model = XRFM(kernel="l2_high_dim", iters=iters, bandwidth=10.0, exponent=1.0, device="cpu",
                 tuning_metric="auc", verbose=False)
    model.fit((X[train], onehot[train]), (X[val], onehot[val]), reg=1e-3, early_stop_multiplier=1.1,
              get_agop_best_model=True)
    seconds = time.perf_counter() - t0
    top = torch.linalg.eigh(model.agop_best_model.double())[1][:, -1].float()

    def score(Z):
        out = model.predict(Z)
        return out[:, 1] - out[:, 0]

    return {"seconds": seconds, "rounds": iters, "auc": test_auc(score, *task["test"]),
            "cos": abs(float(top @ task["v"]))}


def make_task(n: int, d: int, rank: int | None) -> dict:
    X_pos, X_neg, v = planted(n, d, rank, seed=0)
    test_pos, test_neg, _ = planted(N_TEST, d, rank, seed=1)
    return {"X_pos": X_pos, "X_neg": X_neg, "v": v, "test": (test_pos, test_neg)}


def speed_rows(sizes: list[int], xrfm_max_n: int, iters: int) -> list[dict]:
    rows = []
    for n in sizes:
        configs = [("polysteer RFM", "rfm", {"iters": iters})]
        if n * 0.8 > 4096:
            configs.append(("polysteer RFM, nystrom 1024 centres", "rfm",
                            {"iters": iters, "nystrom": True, "max_samples": 1024}))
        configs.append(("polysteer DiffMean", "diffmean", {}))
        for label, name, params in configs:
            load = os.getloadavg()[0]
            fit = fit_polysteer(name, tuple(params.items()), n, D, RANK)
            rows.append({"method": label, "n": n, "load": load, **fit})
            print(rows[-1], flush=True)
        if _has_xrfm() and n <= xrfm_max_n:
            load = os.getloadavg()[0]
            rows.append({"method": "xRFM 0.4.5 (l2_high_dim)", "n": n, "load": load,
                         **run_xrfm(make_task(n, D, RANK), iters)})
            print(rows[-1], flush=True)
    return rows


def recovery_rows(n: int, iters: int) -> list[dict]:
    rows = []
    for label, d, rank in (("isotropic, d=16", 16, None), (f"low-rank {RANK} in d={D}", D, RANK),
                           (f"isotropic, d={D}", D, None)):
        rfm = fit_polysteer("rfm", (("iters", iters),), n, d, rank)
        diffmean = fit_polysteer("diffmean", (), n, d, rank)
        rows.append({"task": label, "n": n, "rfm_cos": rfm["cos"], "diffmean_cos": diffmean["cos"],
                     "rfm_auc": rfm["auc"], "diffmean_auc": diffmean["auc"]})
        print(rows[-1], flush=True)
    return rows


def _has_xrfm() -> bool:
    return importlib.util.find_spec("xrfm") is not None


def plot(speed: list[dict], recovery: list[dict], path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [f"{r['method']}\nn={r['n']}" for r in speed]
    left.barh(labels, [r["seconds"] for r in speed], color="tab:blue")
    left.set_xscale("log")
    left.set_xlabel(f"fit time, s (d={D}, {torch.get_num_threads()} threads)")
    left.invert_yaxis()
    x = torch.arange(len(recovery)).float()
    right.bar(x - 0.2, [r["rfm_cos"] for r in recovery], 0.4, label="RFM")
    right.bar(x + 0.2, [r["diffmean_cos"] for r in recovery], 0.4, label="DiffMean")
    right.axhline(0.95, color="grey", linestyle="--", linewidth=1)
    right.set_xticks(x.tolist(), [r["task"].replace(", ", "\n").replace(" in ", "\nin ") for r in recovery])
    right.set_ylabel("|cos(direction, planted v)|")
    right.set_title("y = 1[(x.v)^2 > 1]")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")


def markdown(results: dict) -> str:
    lines = ["# RFM speed and planted-direction recovery", "",
             "Commands (each run merges its rows into `results.json`):", ""]
    lines += [f"- `{run['command']}` ({run['threads']} threads, load average {run['load'][0]:.1f} -> "
              f"{run['load'][1]:.1f})" for run in results["runs"]]
    lines += ["", f"Machine: {platform.machine()}, 2 shared cores, torch {torch.__version__}. Other jobs shared the "
              "cores (the load column is the 1-minute load average when the fit started), so times are upper "
              "bounds.", "",
              f"## Fit time (planted quadratic concept, low-rank {RANK} in d={D})", "",
              "| method | n | fit s | rounds | test AUC | \\|cos(v)\\| | load |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['n']} | {r['seconds']:.1f} | {r['rounds']} | {r['auc']:.3f} | {r['cos']:.3f} | "
              f"{r['load']:.1f} |" for r in results["speed"]]
    lines += ["", "## Planted nonlinear direction: |cos| with v", "",
              "| task | n | RFM \\|cos\\| | DiffMean \\|cos\\| | RFM test AUC | DiffMean test AUC |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['n']} | {r['rfm_cos']:.3f} | {r['diffmean_cos']:.3f} | {r['rfm_auc']:.3f} | "
              f"{r['diffmean_auc']:.3f} |" for r in results["recovery"]]
    lines += ["", "RFM's AUC is its kernel probe (`decision_function`) on 2000 fresh test points; DiffMean's is the "
              "projection on its direction. Above 4096 training points polysteer's RFM subsamples to 4096 unless "
              "`nystrom=True`. xRFM solves its whole training set exactly in float32 (LU) every round and fits one "
              "more predictor after the last AGOP.", "", "![plot](rfm_speed.png)", ""]
    return "\n".join(lines)


def merge(old: list[dict], new: list[dict], key: tuple[str, ...]) -> list[dict]:
    """Rows of ``old`` not re-measured in ``new``, then ``new``, in a stable order."""
    fresh = {tuple(r[k] for k in key) for r in new}
    return [r for r in old if tuple(r[k] for k in key) not in fresh] + new


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/rfm")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", default="4000,20000")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--part", choices=("speed", "recovery", "all"), default="all")
    parser.add_argument("--xrfm-max-n", type=int, default=4000, help="skip xRFM above this n (exact n x n solves)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "results.json"
    results = json.loads(store.read_text()) if store.exists() else {"speed": [], "recovery": [], "runs": []}
    start = os.getloadavg()[0]
    if args.part in ("speed", "all"):
        sizes = [int(s) for s in args.sizes.split(",")]
        results["speed"] = merge(results["speed"], speed_rows(sizes, args.xrfm_max_n, args.iters), ("method", "n"))
    if args.part in ("recovery", "all"):
        results["recovery"] = merge(results["recovery"], recovery_rows(4000, args.iters), ("task", "n"))
    command = " ".join(["PYTHONPATH=/tmp/xrfm_pkg OMP_NUM_THREADS=2 .venv/bin/python benchmarks/rfm_speed.py",
                        *(sys.argv[1:] if argv is None else argv)])
    run = {"command": command, "threads": args.threads, "load": [start, os.getloadavg()[0]]}
    results["runs"] = merge(results["runs"], [run], ("command",))
    write_text_atomic(store, json.dumps(results, indent=1))
    atomic_write(out / "rfm_speed.png", lambda tmp: plot(results["speed"], results["recovery"], tmp))
    write_text_atomic(out / "README.md", markdown(results))
    print(f"wrote {out}/README.md, rfm_speed.png and results.json")


if __name__ == "__main__":
    main()
