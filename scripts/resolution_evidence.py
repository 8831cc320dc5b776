"""Native training vs half-resolution training + fine-tuning, over several seeds (paper Section 4.3, Table 4).

For each seed this runs ``peffnet recipe --baseline`` (half-resolution training, fine-tuning at native,
and the same training at native resolution), then tabulates top-1 at the native test size and at the best
test size, and the wall time of each regime, as mean +- std over seeds. Re-running continues unfinished
seeds (``--resume``) and reads finished ones from their ``summary.json``. Output: ``OUT/evidence.md`` and
``OUT/evidence.json``.

    python scripts/resolution_evidence.py --out runs/evidence --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from peffnet.errors import ConfigError
from peffnet.training.recipe import RecipeConfig, result_at, run_recipe


def mean_std(values: list[float]) -> str:
    """``mean +- std`` (sample std; just the value for one seed)."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} +- {statistics.stdev(values):.2f}"


def regimes(summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per regime: top-1 at the native test size, best top-1 and its size, training wall time."""
    evaluations = summary["evaluations"]
    record = {}
    for regime, model, wall in (("native", "native", "native_wall_time_s"),
                                ("half+finetune", "finetuned", "half_wall_time_s")):
        best = evaluations[model]["best"]
        record[regime] = {"top1_at_native": result_at(summary, model, summary["native"])["top1"],
                          "best_top1": best["top1"], "best_resolution": best["resolution"],
                          "wall_time_s": summary[wall]}
    return record


def table(per_seed: dict[int, dict[str, dict[str, float]]], summary: dict[str, Any]) -> str:
    """The markdown table of the evidence."""
    seeds = sorted(per_seed)
    c = summary["config"]
    lines = [f"{c['model']} ({c['norm']}) on {c['data']}, {c['epochs']} training epoch(s), native "
             f"{summary['native']} px, half {summary['train_resolution']} px + fine-tuning {c['finetune_stages']} "
             f"part(s) for {summary['stages']['finetune']['epochs']} epoch(s) on {c['finetune_subset'] or 'all'} "
             "images; seeds "
             f"{', '.join(map(str, seeds))}; {summary['device']}, torch {summary['torch']}.", "",
             f"| regime | top-1 % at {summary['native']} px | best top-1 % [size] | training wall time s | "
             "per seed: top-1 at native / wall s |", "|---|---|---|---|---|"]
    for name in ("native", "half+finetune"):
        rows = [per_seed[s][name] for s in seeds]
        sizes = "/".join(str(int(r["best_resolution"])) for r in rows)
        detail = "; ".join(f"{r['top1_at_native']:.2f} / {r['wall_time_s']:.0f}" for r in rows)
        lines.append(f"| {name} | {mean_std([r['top1_at_native'] for r in rows])} | "
                     f"{mean_std([r['best_top1'] for r in rows])} [{sizes}] | "
                     f"{mean_std([r['wall_time_s'] for r in rows])} | {detail} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="directory of the runs (one recipe per seed) and the table")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--model", default="g16_efficientnet_b0")
    p.add_argument("--norm", default="lnpn")
    p.add_argument("--epochs", type=int, default=RecipeConfig.epochs)
    p.add_argument("--subset", type=int)
    p.add_argument("--finetune-subset", type=int, default=RecipeConfig.finetune_subset)
    p.add_argument("--val-subset", type=int, default=RecipeConfig.val_subset)
    p.add_argument("--test-subset", type=int)
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    out = Path(args.out)
    per_seed, summary = {}, {}
    try:
        for seed in args.seeds:
            cfg = RecipeConfig(out=str(out / f"seed{seed}"), data=args.data, model=args.model, norm=args.norm,
                               epochs=args.epochs, subset=args.subset, finetune_subset=args.finetune_subset,
                               val_subset=args.val_subset, test_subset=args.test_subset, threads=args.threads,
                               seed=seed, baseline=True, resume=True, progress=False,
                               sweep_subset=0)  # every test size on every test image: top-1 at native
            finished = Path(cfg.out) / "summary.json"
            summary = json.loads(finished.read_text()) if finished.exists() else {}
            if summary.get("native_wall_time_s") is None:  # a seed's recipe (with its baseline) is unfinished
                summary = run_recipe(cfg)
            per_seed[seed] = regimes(summary)
            print(f"seed {seed}: {json.dumps(per_seed[seed])}", flush=True)
    except ConfigError as err:
        print(f"resolution_evidence: error: {err}", file=sys.stderr)
        return 2
    md = table(per_seed, summary)
    (out / "evidence.md").write_text(md)
    (out / "evidence.json").write_text(json.dumps({"seeds": per_seed, "config": summary["config"],
                                                   "device": summary["device"], "torch": summary["torch"]},
                                                  indent=2) + "\n")
    print(md, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
