"""Does the main job keep its speed when another process wants the cores, and on an idle machine? Training
throughput of the README's main job (``peffnet recipe``'s training stage: G16 LN+PN B0 on Fashion-MNIST at
32 px, batch 128, 2 threads) alone and beside one competing CPU-bound process, with the OpenMP waiting the CLI
chooses (``PASSIVE`` when other processes keep a core busy at its start, else libgomp's ``GOMP_SPINCOUNT`` of
``peffnet_command.SPIN_WHEN_IDLE``) and with the settings of ``--compare``.

    python benchmarks/bench_contention.py --images 2560    # about 5 minutes on 2 cores
    python benchmarks/bench_contention.py --rounds 1 --images 3840 --compare GOMP_SPINCOUNT=300000 GOMP_SPINCOUNT=3000

Each measurement is a ``peffnet train`` subprocess over the same images; ``train_img_per_s`` comes from its
``summary.json``. The runs alternate (alone, contended) for ``--rounds`` rounds; the slowdown is the median
of the per-round ratios. The competitor is a busy Python loop (one core's worth of work), started before the
run. Results: ``benchmarks/results/contention_cpu.json`` and ``.md``. Goals with the CLI's default: slowdown
<= 1.6x, and alone at least 0.9x the fastest setting's alone throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOAL = 1.6
ALONE_GOAL = 0.9
BUSY = "import time\nend = time.time() + 3600\nwhile time.time() < end:\n    pass\n"


OPENMP_WAITING = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def train_img_per_s(images: int, setting: dict[str, str], out: Path) -> float:
    """``peffnet train`` on ``images`` Fashion-MNIST images as the recipe's training stage, with the OpenMP
    waiting variables of ``setting`` only (none: the CLI's default); its img/s."""
    env = {k: v for k, v in os.environ.items() if k not in OPENMP_WAITING}
    env.update(setting)
    cmd = [sys.executable, "-m", "peffnet", "train", "--model", "g16_efficientnet_b0", "--norm", "lnpn", "--data",
           "fashion-mnist", "--resolution", "32", "--batch-size", "128", "--epochs", "1", "--subset", str(images),
           "--val-subset", "128", "--head-init-scale", "0", "--drop-path-rate", "0", "--mixup-alpha", "0",
           "--no-progress", "--out", str(out)]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())["train_img_per_s"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=5120, help="training images per measurement (default 5120)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of (alone, contended) per setting (default 3)")
    p.add_argument("--compare", nargs="*", default=["OMP_WAIT_POLICY=PASSIVE", "OMP_WAIT_POLICY=ACTIVE"],
                   metavar="VAR=VALUE", help="other OpenMP wait settings to measure beside the CLI's default")
    p.add_argument("--results", type=Path, default=HERE / "results", help="output folder")
    args = p.parse_args(argv)
    settings = {"CLI default": {}}
    settings.update({s: dict([s.split("=", 1)]) for s in args.compare})
    record = {"command": " ".join(["python", "benchmarks/bench_contention.py", *(argv or sys.argv[1:])]),
              "cpus": os.cpu_count(), "machine": platform.processor(), "images": args.images, "policies": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for n, (label, setting) in enumerate(settings.items()):
            rounds = []
            for r in range(args.rounds):
                alone = train_img_per_s(args.images, setting, Path(tmp) / f"{n}-{r}a")
                competitor = subprocess.Popen([sys.executable, "-c", BUSY])
                try:
                    contended = train_img_per_s(args.images, setting, Path(tmp) / f"{n}-{r}c")
                finally:
                    competitor.kill()
                    competitor.wait()
                rounds.append({"alone_img_per_s": alone, "contended_img_per_s": contended,
                               "slowdown": alone / contended})
                print(f"{label}, round {r + 1}: alone {alone:.0f} img/s, beside a busy process {contended:.0f} "
                      f"img/s, slowdown {alone / contended:.2f}x", file=sys.stderr, flush=True)
            record["policies"][label] = {"rounds": rounds,
                                         "slowdown": statistics.median(x["slowdown"] for x in rounds)}
    ours = record["policies"]["CLI default"]["slowdown"]
    alone = {label: statistics.median(x["alone_img_per_s"] for x in pol["rounds"])
             for label, pol in record["policies"].items()}
    alone_ratio = alone["CLI default"] / max(alone.values())
    record["goal"] = {"slowdown_at_most": GOAL, "measured": ours, "alone_at_least": ALONE_GOAL,
                      "alone_ratio": alone_ratio, "met": ours <= GOAL and alone_ratio >= ALONE_GOAL}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "contention_cpu.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = ["# The main job beside a competing process", "", f"`{record['command']}` on {record['cpus']} CPUs; "
             f"{args.images} images per run, {args.rounds} rounds of (alone, contended).", "",
             "| OpenMP waiting | alone img/s (median) | beside a busy process | slowdown (median of rounds) |",
             "|---|---|---|---|"]
    for label, pol in record["policies"].items():
        alone = statistics.median(x["alone_img_per_s"] for x in pol["rounds"])
        cont = statistics.median(x["contended_img_per_s"] for x in pol["rounds"])
        lines.append(f"| {label} | {alone:.0f} | {cont:.0f} | {pol['slowdown']:.2f}x |")
    lines += ["", f"Goals with the CLI's default: slowdown <= {GOAL}x (measured {ours:.2f}x), alone >= {ALONE_GOAL}x "
              f"the fastest alone (measured {alone_ratio:.2f}x): {'met' if record['goal']['met'] else 'NOT met'}."]
    (args.results / "contention_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
