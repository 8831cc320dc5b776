"""Running a study: measure every configuration's speed in one alternating benchmark, train the grid (each
configuration in its fastest layout and precision), evaluate, and write the report (paper Figure 1).

The study directory holds ``plan.json`` (the recipe: what every run computes), ``speed.json``
(:mod:`peffnet.study.speed`), ``runs/<config>-s<seed>/`` (``train/`` and, for the half regime,
``finetune/``: ordinary run directories, resumable) with ``result.json`` once a run is finished, and the
report (``study.json``, ``study.md``, figures; :mod:`peffnet.study.report`). Rerunning skips finished runs
and continues interrupted ones; a rerun with more seeds or configurations extends the study.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from peffnet.data import build_dataset
from peffnet.errors import ConfigError
from peffnet.files import write_file
from peffnet.study.config import Cell, StudyConfig
from peffnet.study.report import write_report
from peffnet.study.speed import FINETUNE_STAGES, measure_speed
from peffnet.training import distributed
from peffnet.training.config import TrainConfig
from peffnet.training.evaluate import evaluate_checkpoint
from peffnet.training.finetune import FinetuneConfig, finetune
from peffnet.training.loop import NonFiniteLoss
from peffnet.training.recipe import SHORT_RUN_FINETUNE_LR
from peffnet.training.train import train

PLAN, SPEED, RESULT = "plan.json", "speed.json", "result.json"


def check_plan(out: Path, cfg: StudyConfig) -> None:
    """Record the study's recipe in ``out/plan.json`` (and the command in ``commands``: a study may be run in
    pieces), or refuse a directory that holds a different study."""
    path = out / PLAN
    commands: list[str] = []
    if path.exists():
        saved = json.loads(path.read_text())
        commands = saved.get("commands", [])
        for name, value in cfg.recipe().items():
            if saved.get(name, cfg.default(name)) != value:
                raise ConfigError(f"{out} holds a different study ({name}={saved.get(name)!r}, this one has "
                                  f"{value!r}); use another --out")
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty and holds no study ({PLAN}); use another --out")
    out.mkdir(parents=True, exist_ok=True)
    command = cfg.recorded_in(out).command_line("study")
    write_file(path, json.dumps({**cfg.recipe(), "commands": [*commands, *([command] if command not in commands
                                                                           else [])]}, indent=1) + "\n")


def cells_in(out: Path) -> list[Cell]:
    """The configurations of the runs a study directory already holds (finished or not)."""
    cells = []
    for run in sorted((out / "runs").glob("*-s*")) if (out / "runs").is_dir() else []:
        g, norm, regime = run.name.rsplit("-s", 1)[0].split("-")
        cells.append(Cell(int(g.removeprefix("g")), norm, regime))
    return cells


def speed_record(cfg: StudyConfig, out: Path, cells: list[Cell], num_classes: int, in_chans: int,
                 device: torch.device) -> dict:
    """``speed.json``: reused when it covers every configuration, else measured again for all of them together
    (so that every reported figure comes from one alternating benchmark)."""
    path = out / SPEED
    if path.exists():
        record = json.loads(path.read_text())
        if {c.key for c in cells} <= set(record["chosen"]):
            return record
    print(f"peffnet study: timing {len(cells)} configuration(s) in alternation on {device}", file=sys.stderr)
    record = measure_speed(cfg, cells, num_classes, in_chans, device)
    write_file(path, json.dumps(record, indent=1) + "\n")
    return record


def _stage(run_dir: Path) -> tuple[dict | None, bool]:
    """(the summary of a finished run directory, whether an unfinished one holds a checkpoint to resume)."""
    summary = run_dir / "summary.json"
    return (json.loads(summary.read_text()) if summary.exists() else None), (run_dir / "checkpoint.pt").exists()


def run_cell(cfg: StudyConfig, cell: Cell, seed: int, chosen: dict[str, dict], out: Path, num_classes: int,
             in_chans: int) -> dict[str, Any]:
    """Train (and fine-tune) one configuration with one seed; returns its ``result.json`` record."""
    native, run = cfg.native(), out / "runs" / f"{cell.key}-s{seed}"
    base = TrainConfig.read_yaml(cfg.train_config) if cfg.train_config else {}  # else train's dataset defaults
    train_dir = run / "train"
    done, resume = _stage(train_dir)
    stages = {"train": done or train(TrainConfig.from_layers(base, {
        "model": cfg.model_name(cell.group_size), "norm": cell.norm, "data": cfg.data,
        "resolution": str(cell.train_resolution(native)), "epochs": cfg.epochs, "batch_size": cfg.batch_size,
        "subset": cfg.subset, "val_subset": cfg.val_subset, "seed": seed, "device": cfg.device,
        "channels_last": chosen["train"]["channels_last"], "amp": chosen["train"]["amp"],
        "out": str(train_dir), "resume": resume, "progress": cfg.progress}))}
    final_dir = train_dir
    if cell.regime == "half":
        final_dir = run / "finetune"
        done, resume = _stage(final_dir)
        lr = cfg.finetune_lr if cfg.finetune_lr is not None else (SHORT_RUN_FINETUNE_LR if cfg.small else None)
        stages["finetune"] = done or finetune(FinetuneConfig(
            checkpoint=str(train_dir), resolution=native, out=str(final_dir), stages=FINETUNE_STAGES,
            data=cfg.data, subset=cfg.finetune_subset, val_subset=cfg.val_subset, epochs=cfg.finetune_epochs,
            batch_size=cfg.batch_size, lr=lr, seed=seed, device=cfg.device,
            channels_last=chosen["finetune"]["channels_last"], amp=chosen["finetune"]["amp"], resume=resume,
            progress=cfg.progress))
    final = evaluate_checkpoint(final_dir, cfg.data, [native], val_subset=cfg.test_subset, device=cfg.device,
                                progress=cfg.progress)["results"][0]
    curve = [{"stage": name, **r} for name, d in (("train", train_dir), ("finetune", run / "finetune"))
             if (d / "metrics.jsonl").exists() for r in _epochs(d)]
    return {"label": cell.label, "key": cell.key, "group_size": cell.group_size, "expansion": cell.expansion,
            "norm": cell.norm, "regime": cell.regime, "seed": seed, "native": native,
            "train_resolution": cell.train_resolution(native), "top1": final["top1"], "top5": final["top5"],
            "test_images": final["images"], "params": stages["train"]["params"], "num_classes": num_classes,
            "in_chans": in_chans,
            "stages": {name: {k: s[k] for k in ("steps", "batch_size", "train_time_s", "wall_time_s", "top1",
                                                   "amp", "model_form")} for name, s in stages.items()},
            "epochs": curve}


def _epochs(run_dir: Path) -> list[dict]:
    """The per-epoch records of a run directory's ``metrics.jsonl``."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: r[k] for k in ("epoch", "step", "top1")} for r in map(json.loads, lines) if r["kind"] == "epoch"]


def run_study(cfg: StudyConfig) -> dict[str, Any]:
    """Run (or continue, or extend) the study ``cfg`` describes; returns the ``study.json`` record."""
    out = Path(cfg.out)
    ctx = distributed.setup(cfg.device)
    if ctx.distributed:
        raise ConfigError("peffnet study runs in one process (its speed benchmark alternates on one device); "
                          "run it without torchrun")
    check_plan(out, cfg)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    probe = build_dataset(cfg.data, "val", cfg.native(), False, subset=1)
    cells = list(dict.fromkeys([*cells_in(out), *cfg.grid()]))
    speed = speed_record(cfg, out, cells, probe.num_classes, probe.in_chans, ctx.device)
    for cell in cfg.grid():
        for seed in cfg.seeds:
            result = out / "runs" / f"{cell.key}-s{seed}" / RESULT
            if not result.exists():
                print(f"peffnet study: {cell.label}, seed {seed}", file=sys.stderr, flush=True)
                try:
                    record = run_cell(cfg, cell, seed, speed["chosen"][cell.key], out, probe.num_classes,
                                      probe.in_chans)
                except NonFiniteLoss as err:  # a diverged configuration is a result too; the study goes on
                    record = {"label": cell.label, "key": cell.key, "seed": seed, "diverged": str(err)}
                write_file(result, json.dumps(record, indent=1) + "\n")
    results = [json.loads(p.read_text()) for p in sorted((out / "runs").glob(f"*/{RESULT}"))]
    return write_report(cfg, out, results, speed, json.loads((out / PLAN).read_text())["commands"])
