"""Throughput of steered generation: HF generate (polysteer's engine) vs vLLM with the polysteer plugin.

Variants per batch size: unsteered, one plan for every request, and up to 16 distinct plans in the batch (request
``i`` takes plan ``i % 16``). Greedy, a fixed number of new tokens, float32, prefix caching off (every variant
recomputes its prompts). Runs are interleaved and the median of the rounds is reported. Run in the vLLM venv::

    .venv-vllm/bin/python benchmarks/vllm_throughput.py --repeats 3 --tokens 32
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
from contextlib import nullcontext
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import torch  # noqa: E402
from common import RESULTS, interleaved_times, markdown  # noqa: E402

from polysteer import Direction, stack_plans, steer, write_text_atomic  # noqa: E402
from polysteer.modalities.text import cache_dir, format_prompt, load_model  # noqa: E402

PROMPT = "Write a short story about a lighthouse keeper."
N_PLANS = 16


def make_directions(model, folder: Path) -> list[dict]:
    """16 random unit directions at layer 12 as files, and one steer spec per direction."""
    identity = {"name": model.config._name_or_path, "architecture": type(model).__name__}
    gen = torch.Generator().manual_seed(0)
    specs = []
    for i in range(N_PLANS):
        vector = torch.randn(model.config.hidden_size, generator=gen)
        Direction.from_fitted({"text.blocks.12.resid_post": vector / vector.norm()}, model=identity, modality="text",
                              finder={"name": "random"}, scaled=False).save(folder / f"d{i}.safetensors")
        specs.append({"direction": f"d{i}", "coefficient": 2.0 + 0.25 * i, "schedule": "generated-only"})
    return specs


def hf_variants(model, tokenizer, batch: int, tokens: int, folder: Path, specs: list[dict]) -> dict:
    inputs = tokenizer([format_prompt(tokenizer, PROMPT)] * batch, return_tensors="pt", add_special_tokens=False)
    plans = [Direction.load(folder / f"{s['direction']}.safetensors").to_plan(s["coefficient"], "add",
                                                                              s["schedule"]) for s in specs]

    def run(plan):
        def go():
            with torch.no_grad(), steer(model, plan) if plan is not None else nullcontext():
                model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                               pad_token_id=tokenizer.eos_token_id)
        return go

    return {"unsteered": run(None), "one plan": run(plans[0]),
            "distinct plans": run(stack_plans([plans[i % N_PLANS] for i in range(batch)]))}


def vllm_variants(llm, prompt_ids: list[int], batch: int, tokens: int, specs: list[dict]) -> dict:
    from vllm import SamplingParams, TokensPrompt

    prompts = [TokensPrompt(prompt_token_ids=prompt_ids)] * batch

    def params(steer_of):
        return [SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True,
                               extra_args=None if steer_of(i) is None else {"steer": steer_of(i)})
                for i in range(batch)]

    def run(steer_of):
        chosen = params(steer_of)
        return lambda: llm.generate(prompts, chosen, use_tqdm=False)

    return {"unsteered": run(lambda i: None), "one plan": run(lambda i: [specs[0]]),
            "distinct plans": run(lambda i: [specs[i % N_PLANS]])}


def measure(args, folder: Path) -> list[dict]:
    from vllm import LLM

    model, tokenizer = load_model(dtype="float32", device="cpu")
    specs = make_directions(model, folder)
    os.environ["POLYSTEER_DIRECTIONS"] = str(folder)
    llm = LLM(str(cache_dir() / "SmolLM2-135M-Instruct"), dtype="float32", enforce_eager=True,
              enable_prefix_caching=False, max_model_len=512, seed=0, max_num_seqs=max(args.batches))
    prompt_ids = tokenizer(format_prompt(tokenizer, PROMPT), add_special_tokens=False)["input_ids"]
    rows = []
    for batch in args.batches:
        fns = {f"hf {k}": v for k, v in hf_variants(model, tokenizer, batch, args.tokens, folder, specs).items()}
        fns |= {f"vllm {k}": v for k, v in vllm_variants(llm, prompt_ids, batch, args.tokens, specs).items()}
        fns["vllm unsteered"](), fns["hf unsteered"]()  # warm-up
        times = interleaved_times(fns, args.repeats)
        medians = {name: statistics.median(ts) for name, ts in times.items()}
        for name, seconds in medians.items():
            backend, variant = name.split(" ", 1)
            rate = batch * args.tokens
            rows.append({"batch": batch, "backend": backend, "variant": variant,
                         "plans in batch": {"unsteered": 0, "one plan": 1}.get(variant, min(batch, N_PLANS)),
                         "tokens/s": rate / seconds,
                         "rounds' range": f"{rate / max(times[name]):.1f}-{rate / min(times[name]):.1f}",
                         "x vLLM unsteered": medians["vllm unsteered"] / seconds,
                         "x same-variant HF": medians[f"hf {variant}"] / seconds})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="polysteer-bench-") as tmp:
        rows = measure(args, Path(tmp))
    load_after = os.getloadavg()
    import vllm

    columns = ["batch", "backend", "variant", "plans in batch", "tokens/s", "rounds' range", "x vLLM unsteered",
               "x same-variant HF"]
    header = (
        "# Steered throughput: HF generate vs vLLM with the polysteer plugin\n\n"
        f"SmolLM2-135M-Instruct, float32, {platform.machine()} CPU with {os.cpu_count()} cores: 1-minute load average "
        f"{load_before[0]:.1f} before and {load_after[0]:.1f} after the run (nothing else running). Tokens/s is the "
        "median of the rounds, with the slowest and fastest round beside it; the ratios compare medians of variants "
        f"run interleaved in the same rounds. vLLM {vllm.__version__}, "
        f"torch {torch.__version__}, enforce_eager, prefix caching off, greedy, {args.tokens} new tokens per "
        f"request, median of {args.repeats} interleaved rounds. \"distinct plans\": request i takes plan i % 16 "
        "(16 direction files at layer 12, add, generated-only); HF runs them as one stacked plan.\n\n"
        f"Command: `.venv-vllm/bin/python benchmarks/vllm_throughput.py --repeats {args.repeats} "
        f"--tokens {args.tokens} --batches {' '.join(map(str, args.batches))}`\n\n")
    text = header + markdown(rows, columns)
    write_text_atomic(RESULTS / "vllm" / "README.md", text)
    print(text)


if __name__ == "__main__":  # vLLM may spawn processes that re-import this file
    main()
