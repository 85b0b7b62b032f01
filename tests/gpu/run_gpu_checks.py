"""Run the text, music and VLM paths through the CLI on a GPU in bfloat16, on tiny random models.

Each modality: find a direction, generate unsteered and steered, check the output exists and the two differ.
Prints ``SKIP: no CUDA device`` and exits 0 where torch sees no CUDA device. ``--device cpu`` runs the same
checks without a GPU (for trying the script itself). Not a pytest module: run it as
``python tests/gpu/run_gpu_checks.py``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CLI = "import sys; from polysteer.cli import main; main(sys.argv[1:])"
PAIRS = [{"positive": f"the ocean and the sea {w}", "negative": f"the city and the train {w}"}
         for w in ("today", "is big", "was old", "my friend")]


def polysteer(*args: object, place: list[str]) -> str:
    """Run one ``polysteer`` command on the chosen device and dtype; its stdout, or exit 1 with its error."""
    cmd = [sys.executable, "-c", CLI, *map(str, args), *place]
    start = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True)
    print(f"  polysteer {' '.join(map(str, args[:2]))} ... rc={done.returncode} ({time.time() - start:.1f} s)")
    if done.returncode != 0:
        sys.exit(f"FAIL: polysteer {' '.join(map(str, args))}\n{done.stdout}\n{done.stderr}")
    return done.stdout


def check(ok: bool, what: str) -> None:
    if not ok:
        sys.exit(f"FAIL: {what}")
    print(f"  ok: {what}")


def text(tmp: Path, place: list[str]) -> None:
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from tiny import tiny_model, tiny_tokenizer

    model_dir, data, out = tmp / "tiny-llama", tmp / "pairs.jsonl", tmp / "text.safetensors"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    data.write_text("\n".join(json.dumps(row) for row in PAIRS))
    polysteer("find", "--model", model_dir, "--data", data, "--layers", "1", "-o", out, place=place)
    check(out.exists(), "text direction written")
    lines = polysteer("generate", "--model", model_dir, "-d", f"{out}@8", "--compare", "--max-new-tokens", 8,
                      "tell me about the day", place=place).splitlines()
    plain, steered = (next(x for x in lines if x.startswith(tag)) for tag in ("[unsteered]", "[steered]"))
    check(len(steered) > len("[steered] ") and plain[len("[unsteered]"):] != steered[len("[steered]"):],
          f"text steered != unsteered: {plain!r} vs {steered!r}")


def music(tmp: Path, place: list[str]) -> None:
    out, wavs = tmp / "note_E.safetensors", {name: tmp / f"{name}.wav" for name in ("plain", "steered")}
    polysteer("music", "find", "--concept", "note:E", "--model", "tiny:transformers", "--finder", "diffmean",
              "--seconds", "0.3", "--variants", 1, "-o", out, place=place)
    check(out.exists(), "music direction written")
    for name, extra in (("plain", []), ("steered", ["-d", f"{out}@50"])):
        polysteer("music", "generate", "lofi piano", "--model", "tiny:transformers", "--seconds", "0.4", "--greedy",
                  *extra, "-o", wavs[name], place=place)
    check(all(w.exists() and w.stat().st_size > 44 for w in wavs.values()), "music WAVs written")
    check(wavs["plain"].read_bytes() != wavs["steered"].read_bytes(), "music steered WAV != unsteered WAV")


def vlm(tmp: Path, place: list[str]) -> None:
    from polysteer.modalities.vision_language.dataset import scene_samples

    out, image = tmp / "vti.safetensors", tmp / "scene.png"
    scene_samples(1)[0].image.save(image)
    polysteer("vlm", "find-vti", "--model", "tiny-llava", "--demos", "scenes:3", "--trials", 4, "-o", out,
              place=place)
    check(out.exists(), "VLM direction written")
    args = ("vlm", "describe", image, "--model", "tiny-llava", "--max-new-tokens", 8)
    plain = polysteer(*args, place=place).strip()
    steered = polysteer(*args, "-d", out, "--alpha-vision", 8, "--alpha-text", 8, place=place).strip()
    check(steered.startswith(f"{image}: ") and plain != steered, f"VLM steered != unsteered: {plain!r} vs {steered!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("SKIP: no CUDA device")
        return 0
    place = ["--device", args.device, "--dtype", args.dtype]
    with tempfile.TemporaryDirectory() as tmp:
        for name, run in (("text", text), ("music", music), ("vlm", vlm)):
            print(f"{name} ({args.device}, {args.dtype}):")
            (Path(tmp) / name).mkdir()
            run(Path(tmp) / name, place)
    print("PASS: text, music and VLM ran steered on", args.device, "in", args.dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
