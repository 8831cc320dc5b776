"""The study's report: ``study.json`` (one row per configuration and seed), ``study.md`` (means and spreads
over seeds, time to accuracy) and the paper's Figure 1 from the measured runs: accuracy against MACs,
training throughput, training time and inference throughput, each with its Pareto front.

Times come from the alternating benchmark (:mod:`peffnet.study.speed`), not from the runs' wall clocks: a
configuration's training time is its images divided by its measured img/s (training, plus fine-tuning in the
half regime), so machine load while a run trained does not distort the comparison. The runs' own wall times
are kept beside them (``measured_train_time_s``).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import torch

from peffnet.files import write_file
from peffnet.measure.plotting import label_points, pyplot, save_figure
from peffnet.measure.report import pareto_front
from peffnet.models import preset
from peffnet.models.profile import config_macs
from peffnet.study.config import NORM_LABELS, StudyConfig
from peffnet.version import __version__

AXES = (  # row key, axis title, lower is better, log scale
    ("macs", "MACs per image at the test resolution (G)", True, True),
    ("train_img_per_s", "training throughput (img/s)", False, True),
    ("train_time_s", "training time (s, from the alternating throughput)", True, True),
    ("infer_img_per_s", "inference throughput (img/s)", False, True),
)
SCALE = {"macs": 1e-9}


def macs(cfg: StudyConfig, result: dict) -> int:
    """Multiply-accumulates per image of the configuration at its test (native) resolution."""
    return config_macs(preset(cfg.model_name(result["group_size"]), norm=result["norm"],
                              num_classes=result["num_classes"], in_chans=result["in_chans"]), result["native"])


def row(cfg: StudyConfig, result: dict, speed: dict) -> dict[str, Any]:
    """One ``study.json`` row: the run's accuracy and the alternating benchmark's figures."""
    chosen = speed["chosen"][result["key"]]
    stages = result["stages"]
    images = {name: s["steps"] * s["batch_size"] for name, s in stages.items()}
    time_s = sum(images[name] / chosen[name]["img_per_s"] for name in images)
    offset = images["train"] / chosen["train"]["img_per_s"]
    curve = [{"stage": p["stage"], "top1": p["top1"],
              "time_s": (0 if p["stage"] == "train" else offset) + p["step"] * stages[p["stage"]]["batch_size"]
              / chosen[p["stage"]]["img_per_s"]} for p in result["epochs"]]
    return {
        "label": result["label"], "group_size": result["group_size"], "expansion": result["expansion"],
        "norm": result["norm"], "regime": result["regime"], "seed": result["seed"],
        "train_resolution": result["train_resolution"], "test_resolution": result["native"],
        "params": result["params"], "macs": macs(cfg, result),
        "train_img_per_s": chosen["train"]["img_per_s"],
        "finetune_img_per_s": chosen["finetune"]["img_per_s"] if "finetune" in chosen else None,
        "infer_img_per_s": chosen["infer"]["img_per_s"],
        "settings": {stage: c["setting"] for stage, c in chosen.items()},
        "train_time_s": time_s,
        "measured_train_time_s": sum(s["train_time_s"] for s in stages.values()),
        "top1": result["top1"], "top5": result["top5"], "test_images": result["test_images"],
        "curve": curve,
    }


def default_targets(rows: list[dict]) -> list[float]:
    """70, 75, ... up to the best final accuracy, and 88, 90, 92 where some configuration reached them."""
    best = max((p["top1"] for r in rows for p in r["curve"]), default=0.0)
    return sorted({t for t in (70.0, 75.0, 80.0, 85.0, 88.0, 90.0, 92.0) if t <= best})


def time_to_targets(curve: list[dict], targets: list[float]) -> dict[str, float | None]:
    """Training time at the first per-epoch evaluation that reached each target (``None``: never)."""
    return {f"{t:g}": next((p["time_s"] for p in curve if p["top1"] >= t), None) for t in targets}


def aggregate(rows: list[dict], targets: list[float]) -> list[dict]:
    """Per configuration: mean and spread (min, max) over seeds of accuracy and time, speed figures."""
    out = []
    for label in dict.fromkeys(r["label"] for r in rows):
        rs = [r for r in rows if r["label"] == label]
        top1 = [r["top1"] for r in rs]
        reach = [time_to_targets(r["curve"], targets) for r in rs]
        out.append({
            **{k: rs[0][k] for k in ("label", "group_size", "expansion", "norm", "regime", "params", "macs",
                                     "train_img_per_s", "finetune_img_per_s", "infer_img_per_s", "settings")},
            "seeds": [r["seed"] for r in rs], "top1": statistics.fmean(top1), "top1_min": min(top1),
            "top1_max": max(top1), "train_time_s": statistics.fmean(r["train_time_s"] for r in rs),
            "time_to_target_s": {t: (statistics.fmean(v) if all(v := [x[t] for x in reach]) else None)
                                 for t in reach[0]},
        })
    return out


def plot(configs: list[dict], key: str, title: str, lower_is_better: bool, log: bool, path: Path) -> list[Path]:
    """Accuracy against one cost, one point per configuration (bars: the spread over seeds), the Pareto front
    over all configurations as a line; colour by normalization, marker by group size, hollow for Half."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 5.0))
    colours = dict(zip(("bn", "gn", "ln", "lnpn", "gnpn"), plt.rcParams["axes.prop_cycle"].by_key()["color"],
                       strict=False))
    markers = {1: "o", 4: "s", 16: "D"}
    scale = SCALE.get(key, 1.0)
    xs, ys = [c[key] * scale for c in configs], [c["top1"] for c in configs]
    front = pareto_front(xs, ys, lower_is_better)
    ax.plot([xs[i] for i in front], [ys[i] for i in front], "-", color="0.6", lw=1.2, zorder=1)
    for c, x, y in zip(configs, xs, ys, strict=True):
        colour = colours.get(c["norm"], "k")
        ax.errorbar(x, y, yerr=[[y - c["top1_min"]], [c["top1_max"] - y]], fmt="none", ecolor=colour, lw=1, zorder=2)
        ax.scatter(x, y, marker=markers.get(c["group_size"], "o"), s=48, zorder=3, edgecolors=colour, linewidths=1.5,
                   facecolors="white" if c["regime"] == "half" else colour)
    if log and max(xs) > 10 * min(xs):  # a log axis only where the values span a decade: readable ticks
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(plt.matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.margins(x=0.15, y=0.1)
    ax.set_xlabel(title + ("" if lower_is_better else " (higher is better)"))
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    Line2D = plt.matplotlib.lines.Line2D
    handles = [Line2D([], [], color="0.6", lw=1.2, label="Pareto front")]
    handles += [Line2D([], [], ls="", marker="o", color=colours[n], label=NORM_LABELS[n])
                for n in dict.fromkeys(c["norm"] for c in configs)]
    handles += [Line2D([], [], ls="", marker=markers.get(g, "o"), color="0.3", label=f"G{g}")
                for g in dict.fromkeys(c["group_size"] for c in configs)]
    ax.legend(handles=handles, fontsize=7, loc="best")
    ax.set_title("G-M-R: group size, normalization, regime (hollow: half resolution + fine-tuning)", fontsize=8)
    label_points(ax, [(x, y, c["label"]) for c, x, y in zip(configs, xs, ys, strict=True)], fontsize=7)
    return save_figure(fig, path)


def write_report(cfg: StudyConfig, out: Path, results: list[dict], speed: dict, commands: list[str]
                 ) -> dict[str, Any]:
    """Write ``study.json``, ``study.md`` and the figures into ``out``; returns the ``study.json`` record."""
    rows = [row(cfg, r, speed) for r in results if "diverged" not in r]
    diverged = [f"{r['label']} seed {r['seed']}: {r['diverged']}" for r in results if "diverged" in r]
    targets = cfg.targets or default_targets(rows)
    configs = aggregate(rows, targets)
    record = {"commands": commands, "device": speed["device"], "torch": torch.__version__,
              "peffnet": __version__, "recipe": cfg.recipe(), "targets": targets, "rows": rows,
              "configurations": configs, "diverged": diverged}
    write_file(out / "study.json", json.dumps(record, indent=1) + "\n")
    figures = [f for key, title, lower, log in AXES
               for f in plot(configs, key, title, lower, log, out / f"accuracy_vs_{key}")] if configs else []
    write_file(out / "study.md", markdown(record, [f for f in figures if f.suffix == ".png"]))
    return record


def markdown(record: dict, figures: list[Path]) -> str:
    """``study.md``: the command, device and versions, the table, time to accuracy, the figures."""
    r = record["recipe"]
    lines = ["# Study: which configuration trains best on this machine (paper Figure 1)", "",
             "Commands (a study may be run in pieces into one directory): "
             + ", ".join(f"`{c}`" for c in record["commands"]) + "  ",
             f"Device: {record['device']}; torch {record['torch']}, "
             f"peffnet {record['peffnet']}.  ",
             f"Recipe: {r['data']}, EfficientNet-{r['size'].upper()}, {r['epochs']} epoch(s) at batch "
             f"{r['batch_size']}{', subset ' + str(r['subset']) if r['subset'] else ''}; half regime: + "
             f"{r['finetune_epochs']} fine-tuning epoch(s) on {r['finetune_subset'] or 'all'} images. Top-1 on "
             f"{'all' if not r['test_subset'] else r['test_subset']} test images at the native resolution.", "",
             "Throughput and training time come from one alternating benchmark of all configurations (each in its "
             "fastest layout and precision, column *setting*); training time = images / that throughput.", "",
             "| configuration | seeds | top-1 % (mean, min-max) | params (M) | GMACs | train img/s | infer img/s | "
             "training time (s) | setting (train / infer) |", "|---|---|---|---|---|---|---|---|---|"]
    for c in record["configurations"]:
        spread = f" ({c['top1_min']:.2f}-{c['top1_max']:.2f})" if len(c["seeds"]) > 1 else ""
        lines.append(f"| {c['label']} | {len(c['seeds'])} | {c['top1']:.2f}{spread} | {c['params'] / 1e6:.2f} | "
                     f"{c['macs'] / 1e9:.3f} | {c['train_img_per_s']:.0f} | {c['infer_img_per_s']:.0f} | "
                     f"{c['train_time_s']:.0f} | {c['settings']['train']} / {c['settings']['infer']} |")
    targets = record["targets"]
    if targets:
        lines += ["", "Time to accuracy: training seconds until a per-epoch evaluation reached the target "
                  "(mean over seeds; - : not reached by every seed).", "",
                  "| configuration | " + " | ".join(f"{t:g} %" for t in targets) + " |",
                  "|---" * (len(targets) + 1) + "|"]
        for c in record["configurations"]:
            cells = [("-" if v is None else f"{v:.0f}") for v in c["time_to_target_s"].values()]
            lines.append(f"| {c['label']} | " + " | ".join(cells) + " |")
    if record["diverged"]:
        lines += ["", "Diverged (loss NaN/inf; not in the table): " + "; ".join(record["diverged"]) + "."]
    lines += ["", "Figures: " + ", ".join(f"[{f.name}]({f.name})" for f in figures)]
    return "\n".join(lines) + "\n"
