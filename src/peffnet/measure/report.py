"""The paper's efficiency figures from real runs (Section 4.4-4.5, Figures 4-6).

Each run directory (docs/formats.md) gives one point per test resolution: its ``summary.json``
point at ``eval_resolution`` and, when ``eval.json`` exists, one point per evaluated resolution. Points
are grouped into series labelled G-M-R like the paper (group size, normalization, training resolution:
``G16-LN+PN-Half``) and drawn against five costs, each series with its Pareto front:

* parameters (Figure 4a) and MACs at the test resolution (Figures 4b, 6a);
* training throughput, ``train_img_per_s`` of ``summary.json`` (Figure 4c);
* inference throughput and batch-1 latency (Figures 6b, 6c), read from ``RUN_DIR/bench.json`` (the JSON
  that ``peffnet bench --out`` writes, or that ``peffnet report --measure`` records there).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from peffnet.errors import ConfigError
from peffnet.files import write_file
from peffnet.measure.plotting import label_points, pyplot, save_figure
from peffnet.models import ModelConfig, preset
from peffnet.models.profile import config_macs

if TYPE_CHECKING:
    from peffnet.measure.bench import BenchOptions

NORM_LABELS = {"bn": "BN", "gn": "GN", "ln": "LN", "lnpn": "LN+PN", "gnpn": "GN+PN"}


@dataclass(frozen=True)
class Metric:
    """One efficiency axis: the point attribute, its axis label and whether lower is better."""

    key: str
    title: str
    lower_is_better: bool
    log: bool = True


METRICS = (
    Metric("params", "parameters (M)", True),
    Metric("macs", "MACs per image (G)", True),
    Metric("train_img_per_s", "training throughput (img/s)", False),
    Metric("infer_img_per_s", "inference throughput (img/s)", False),
    Metric("latency_ms", "batch-1 latency (ms)", True),
)
SCALE = {"params": 1e-6, "macs": 1e-9}


@dataclass(frozen=True)
class Point:
    """One (run, test resolution) accuracy point and its costs."""

    run: str
    series: str  # G-M-R label
    size: str  # "B0"
    resolution: int
    top1: float
    params: int
    macs: int
    train_img_per_s: float | None  # of the training that made the weights (a fine-tuned run: its parent's)
    infer_img_per_s: float | None = None
    latency_ms: float | None = None
    dataset: str = ""
    num_classes: int = 0
    finetune_img_per_s: float | None = None  # fine-tuned runs: the fine-tuning's own (mostly frozen) throughput

    @property
    def name(self) -> str:
        return f"{self.size}@{self.resolution}"


def pareto_front(xs: Sequence[float], ys: Sequence[float], lower_x_is_better: bool = True) -> list[int]:
    """Indices of the points no other point dominates, in order of increasing cost.

    ``y`` (accuracy) is maximized; ``x`` is minimized (a cost such as MACs or latency) or maximized
    (a throughput) as ``lower_x_is_better`` says. A point dominates another when it is at least as good
    on both axes and strictly better on one; identical points do not dominate each other.
    """
    if len(xs) != len(ys):
        raise ValueError("xs and ys differ in length")
    sign = 1.0 if lower_x_is_better else -1.0
    cost = [sign * x for x in xs]

    def dominates(j: int, i: int) -> bool:
        return cost[j] <= cost[i] and ys[j] >= ys[i] and (cost[j] < cost[i] or ys[j] > ys[i])

    front = [i for i in range(len(xs)) if not any(dominates(j, i) for j in range(len(xs)))]
    return sorted(front, key=lambda i: (cost[i], -ys[i]))


def series_label(cfg: ModelConfig, train_resolution: int) -> str:
    """G-M-R (paper Figure 4): ``G16-LN+PN-Half``; R is Native, Half (Table 1) or the size in pixels."""
    from peffnet.resolution import half_resolution

    if train_resolution == cfg.resolution:
        r = "Native"
    elif cfg.resolution >= 32 and train_resolution == half_resolution(cfg.resolution):
        r = "Half"
    else:
        r = f"{train_resolution}px"
    return f"G{cfg.group_size}-{NORM_LABELS.get(cfg.norm, cfg.norm.upper())}-{r}"


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {what} {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"cannot read {what} {path}: not a JSON object")
    return data


def run_config(run_dir: Path, summary: dict) -> ModelConfig:
    """The run's model configuration: the checkpoint's ``model_config``, else rebuilt from ``summary.json``."""
    ckpt = run_dir / "checkpoint.pt"
    if ckpt.is_file():
        from peffnet.checkpoint import config_from_checkpoint, load_checkpoint

        return config_from_checkpoint(load_checkpoint(ckpt))
    return preset(summary["model"], group_size=summary["group_size"], expansion=summary["expansion"],
                  norm=summary["norm"], num_classes=summary.get("num_classes", 1000))


def load_run(run_dir: str | Path) -> tuple[list[Point], ModelConfig]:
    """The accuracy points of one run directory (with bench.json figures when recorded) and its config."""
    run_dir = Path(run_dir)
    if not (run_dir / "summary.json").is_file():
        raise ConfigError(f"not a run directory (no summary.json): {run_dir}")
    summary = _read_json(run_dir / "summary.json", "run summary")
    missing = [k for k in ("model", "group_size", "expansion", "norm", "train_resolution", "eval_resolution",
                           "top1", "params", "macs") if k not in summary]
    if missing:
        raise ConfigError(f"{run_dir / 'summary.json'} lacks {', '.join(missing)}")
    cfg = run_config(run_dir, summary)
    accuracy = {int(summary["eval_resolution"]): float(summary["top1"])}
    if (run_dir / "eval.json").is_file():
        for r in _read_json(run_dir / "eval.json", "evaluation").get("results", []):
            accuracy[int(r["resolution"])] = float(r["top1"])
    bench = {}
    if (run_dir / "bench.json").is_file():
        for r in _read_json(run_dir / "bench.json", "benchmark").get("results", []):
            bench.setdefault(int(r["resolution"]), {}).update({k: r[k] for k in ("infer", "latency") if k in r})
    # A fine-tuned model belongs to the series of the training it continues (paper: "Half" = half resolution
    # + fine-tuning); its training throughput is the parent run's, its fine-tuning throughput is kept apart.
    finetuned = "parent_train_resolution" in summary
    series = series_label(cfg, int(summary["parent_train_resolution" if finetuned else "train_resolution"]))
    train_img_per_s = summary.get("train_img_per_s")
    if finetuned:
        parent = (run_dir / summary["parent"]).parent / "summary.json"  # relative to the run (or absolute)
        train_img_per_s = _read_json(parent, "parent run summary").get("train_img_per_s") if parent.is_file() else None
    points = []
    for res, top1 in sorted(accuracy.items()):
        macs = int(summary["macs"]) if res == int(summary["eval_resolution"]) else config_macs(cfg, res)
        b = bench.get(res, {})
        points.append(Point(str(run_dir), series, cfg.size.upper(), res, top1, int(summary["params"]), macs,
                            train_img_per_s, b.get("infer", {}).get("img_per_s"), b.get("latency", {}).get("median_ms"),
                            summary.get("dataset", ""), int(summary.get("num_classes", cfg.num_classes)),
                            summary.get("train_img_per_s") if finetuned else None))
    return points, cfg


def measure_inference(runs: list[tuple[list[Point], ModelConfig]], opts: BenchOptions) -> list[list[Point]]:
    """Time inference and batch-1 latency of every point, all in alternation in this process, and record
    each run's figures in ``RUN_DIR/bench.json`` (weights do not change the speed: random init is used)."""
    from peffnet.measure.bench import run_bench
    from peffnet.measure.subjects import BenchSpec

    specs, owners = [], []
    for i, (points, cfg) in enumerate(runs):
        overrides = {"group_size": cfg.group_size, "expansion": cfg.expansion, "norm": cfg.norm,
                     "in_chans": cfg.in_chans, "num_classes": cfg.num_classes}
        for p in points:
            specs.append(BenchSpec(cfg.name, overrides, p.resolution, label=f"{Path(p.run).name}:{p.name}"))
            owners.append(i)
    result = run_bench(specs, opts.only("infer", "latency"))
    out = []
    for i, (points, _) in enumerate(runs):
        mine = [r for r, owner in zip(result["results"], owners, strict=True) if owner == i]
        record = {**{k: result[k] for k in ("env", "peaks", "options")}, "results": mine}
        write_file(Path(points[0].run) / "bench.json", json.dumps(record, indent=1) + "\n")
        out.append([replace(p, infer_img_per_s=r["infer"]["img_per_s"], latency_ms=r["latency"]["median_ms"])
                    for p, r in zip(points, mine, strict=True)])
    return out


def plot_metric(points: list[Point], metric: Metric, path: Path) -> list[Path]:
    """Accuracy against one cost, a colour per series, each series' Pareto front as a line; PNG + SVG."""
    fig, ax = pyplot().subplots(figsize=(6.4, 4.6))
    scale = SCALE.get(metric.key, 1.0)
    labels: list[tuple[float, float, str]] = []
    for series in sorted({p.series for p in points}):
        pts = [p for p in points if p.series == series and getattr(p, metric.key) is not None]
        if not pts:
            continue
        xs, ys = [getattr(p, metric.key) * scale for p in pts], [p.top1 for p in pts]
        (line,) = ax.plot(*zip(*[(xs[i], ys[i]) for i in pareto_front(xs, ys, metric.lower_is_better)],
                               strict=True), "-", lw=1.5, label=series)
        ax.scatter(xs, ys, color=line.get_color(), s=22, zorder=3)
        labels += [(x, y, p.name) for p, x, y in zip(pts, xs, ys, strict=True)]
    values = [v for p in points if (v := getattr(p, metric.key)) is not None]
    if metric.log and values and max(values) > 10 * min(values):  # log only across a decade: readable ticks
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(pyplot().matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(pyplot().matplotlib.ticker.NullFormatter())
    ax.margins(x=0.1)
    ax.set_xlabel(metric.title + (" (higher is better)" if not metric.lower_is_better else ""))
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, title="G-M-R", title_fontsize=7)
    label_points(ax, labels, fontsize=6)
    return save_figure(fig, path)


def fronts(points: list[Point]) -> dict[str, list[int]]:
    """For each metric, the indices of ``points`` on the Pareto front over all series together."""
    out = {}
    for m in METRICS:
        idx = [i for i, p in enumerate(points) if getattr(p, m.key) is not None]
        front = pareto_front([getattr(points[i], m.key) for i in idx], [points[i].top1 for i in idx],
                             m.lower_is_better)
        out[m.key] = [idx[i] for i in front]
    return out


def check_comparable(points: list[Point]) -> None:
    """A one-line error for runs on different datasets or class counts: one Pareto front cannot rank them."""
    groups: dict[tuple[str, int], set[str]] = {}
    for p in points:
        groups.setdefault((p.dataset, p.num_classes), set()).add(Path(p.run).name)
    if len(groups) > 1:
        kinds = "; ".join(f"{d or '?'} ({n} classes): {', '.join(sorted(runs))}" for (d, n), runs in groups.items())
        raise ConfigError(f"the runs were trained on different data and cannot share a Pareto front ({kinds}); "
                          f"report each dataset separately")


def write_report(points: list[Point], out_dir: Path, command: str = "") -> dict[str, object]:
    """All figures, ``report.md`` and ``points.json`` into ``out_dir``; returns what was written.

    Raises:
        ConfigError: the points come from runs on different datasets or class counts.
    """
    check_comparable(points)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    skipped = []
    for m in METRICS:
        if any(getattr(p, m.key) is not None for p in points):
            files += plot_metric(points, m, out_dir / f"accuracy_vs_{m.key}")
        else:
            skipped.append(m)
    front = fronts(points)
    short = {"params": "P", "macs": "M", "train_img_per_s": "T", "infer_img_per_s": "I", "latency_ms": "L"}
    lines = ["# Efficiency report", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += ["Series are labelled G-M-R (group size, normalization, training resolution: Native, Half or pixels) "
              "as in the paper's Figures 4-6. *Pareto* lists the costs for which the point is on the front over all "
              "series (P params, M MACs, T training img/s, I inference img/s, L batch-1 latency).", "",
              "*train img/s* is the throughput of the training that made the weights (for a fine-tuned run, its "
              "parent's); *fine-tune img/s* is a fine-tuning's own, with most layers frozen.", "",
              "| series | point | run | top-1 % | params (M) | GMACs | train img/s | fine-tune img/s | infer img/s "
              "| latency ms | Pareto |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v, f: "" if v is None else format(v, f)
    for i, p in sorted(enumerate(points), key=lambda t: (t[1].series, t[1].size, t[1].resolution)):
        on = "".join(short[k] for k in short if i in front[k])
        lines.append(f"| {p.series} | {p.name} | {Path(p.run).name} | {p.top1:.2f} | {p.params / 1e6:.2f} | "
                     f"{p.macs / 1e9:.3f} | {fmt(p.train_img_per_s, '.1f')} | {fmt(p.finetune_img_per_s, '.1f')} | "
                     f"{fmt(p.infer_img_per_s, '.1f')} | "
                     f"{fmt(p.latency_ms, '.2f')} | {on} |")
    lines += ["", "Figures: " + ", ".join(f"[{f.name}]({f.name})" for f in files if f.suffix == ".png")]
    if skipped:
        lines += ["", "Not drawn (no run recorded it): " + ", ".join(m.title for m in skipped) + ". Record "
                  "inference figures with `peffnet report --measure` or `peffnet bench ... --out RUN/bench.json`."]
    write_file(out_dir / "report.md", "\n".join(lines) + "\n")
    write_file(out_dir / "points.json", json.dumps({"points": [asdict(p) for p in points], "pareto": front},
                                                   indent=1) + "\n")
    return {"files": [*files, out_dir / "report.md", out_dir / "points.json"], "pareto": front,
            "skipped": [m.key for m in skipped]}
