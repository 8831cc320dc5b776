"""Evaluating a checkpoint over a range of test resolutions (paper Sections 3.3 and 4.3, Figure 3).

The test resolution should keep ``r_test = r_train (mod 32)`` with the training resolution recorded in
the checkpoint; other sizes are evaluated but warned about (the asymmetric stride-2 layers then fall at
other depths than in training). Results go to ``eval.json`` (docs/formats.md): one record per
resolution (top-1, top-5, whether the mod-32 rule holds, throughput) and the best one.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from peffnet.checkpoint import model_from_checkpoint
from peffnet.data import build_dataset, make_loader
from peffnet.errors import ConfigError
from peffnet.files import relative_to, write_file
from peffnet.fusion import fold_proxy_norm
from peffnet.models import ModelConfig
from peffnet.resolution import MAX_SWEEP_RESOLUTION, MIN_RESOLUTION, check_resolution, mod32_ok, test_resolutions
from peffnet.training import distributed
from peffnet.training.loop import evaluate


def checkpoint_file(path: str | Path) -> Path:
    """The checkpoint a user names: the file itself, or ``DIR/checkpoint.pt`` for a run directory."""
    path = Path(path)
    return path / "checkpoint.pt" if path.is_dir() else path


def check_data(dataset: Dataset, model_cfg: ModelConfig, spec: str) -> None:
    """A one-line error when the dataset's classes or channels do not fit the checkpoint's model."""
    have = (dataset.num_classes, dataset.in_chans)
    want = (model_cfg.num_classes, model_cfg.in_chans)
    if have != want:
        raise ConfigError(f"data {spec} has {have[0]} classes and {have[1]} channel(s), but the checkpoint's "
                          f"{model_cfg.name} was trained for {want[0]} classes and {want[1]} channel(s)")


def sweep_resolutions(train_resolution: int, lo: int | None = None, hi: int | None = None) -> list[int]:
    """``--sweep``: the mod-32 sizes from ``train_resolution - 32`` up to ``min(700, 3 * train_resolution)``.

    One size below training shows the cost of testing smaller; the paper's best test sizes lie above the
    training size (Table 5), and Section 4.3 finds no benefit below it.
    """
    lo = max(MIN_RESOLUTION, train_resolution - 32) if lo is None else lo
    hi = min(MAX_SWEEP_RESOLUTION, 3 * train_resolution) if hi is None else hi
    sizes = test_resolutions(train_resolution, lo, hi)
    if not sizes:
        raise ConfigError(f"no size = {train_resolution} (mod 32) lies in [{lo}, {hi}]")
    return sizes


def evaluate_checkpoint(path: str | Path, data: str | None = None, resolutions: list[int] | None = None, *,
                        data_dir: str | None = None, val_subset: int | None = None, batch_size: int = 200,
                        device: str = "auto", amp: str = "off", averaged: bool = True,
                        progress: bool = True) -> dict[str, Any]:
    """Top-1/top-5 of a checkpoint's final (``averaged``) or live weights at each resolution, in the form a
    served model takes (proxy norm folded, :func:`peffnet.fold_proxy_norm`; channels-last).

    ``data`` defaults to the checkpoint's dataset and ``resolutions`` to its training resolution.
    Resolutions that break the mod-32 rule are warned about on stderr and marked ``mod32_ok: false``.
    Returns the ``eval.json`` record; ``best`` is the highest top-1 (the smaller size on a tie).
    """
    path = checkpoint_file(path)
    model, state = model_from_checkpoint(path, averaged=averaged)
    train_res = int(state["train_resolution"])
    spec = data or state["data"]["spec"]
    augment = state.get("config", {}).get("augment", "crop")  # image data: the run's validation preprocessing
    resolutions = [check_resolution(r, "test resolution") for r in (resolutions or [train_res])]
    ctx = distributed.setup(device)
    for r in resolutions:
        if ctx.is_main and not mod32_ok(train_res, r):
            print(f"warning: test resolution {r} breaks r_test = r_train (mod 32) for the training resolution "
                  f"{train_res} recorded in {path} (paper Section 3.3)", file=sys.stderr)
    model = fold_proxy_norm(model.eval()).to(ctx.device, memory_format=torch.channels_last)  # the served form
    results = []
    for r in resolutions:
        dataset = build_dataset(spec, "val", r, False, data_dir, subset=val_subset, augment=augment)
        check_data(dataset, model.cfg, spec)
        loader = make_loader(dataset, batch_size, train=False, rank=ctx.rank, world_size=ctx.world_size,
                             device=ctx.device)
        start = time.perf_counter()
        batches = tqdm(loader, desc=f"evaluating at {r} px", unit="batch", leave=False,
                       disable=not (progress and ctx.is_main))
        top1, top5 = evaluate(model, batches, amp, channels_last=True)
        seconds = time.perf_counter() - start
        results.append({"resolution": r, "top1": top1, "top5": top5, "mod32_ok": mod32_ok(train_res, r),
                        "images": len(dataset), "img_per_s": len(dataset) / seconds, "time_s": seconds})
    best = max(results, key=lambda x: (x["top1"], -x["resolution"]))
    m = model.cfg
    return {"checkpoint": str(path), "train_resolution": train_res, "model": m.name, "group_size": m.group_size,
            "expansion": m.expansion, "norm": m.norm, "dataset": spec,
            "weights": "averaged" if averaged else "live", "device": str(ctx.device), "torch": torch.__version__,
            "results": results, "best": best}


def eval_json_path(checkpoint: str | Path, out: str | Path | None) -> Path | None:
    """Where ``eval.json`` goes: ``OUT/eval.json``, else next to a run directory's checkpoint, else nowhere."""
    if out is not None:
        return Path(out) / "eval.json"
    run_dir = checkpoint_file(checkpoint).parent
    return run_dir / "eval.json" if (run_dir / "config.yaml").is_file() else None


def write_eval(record: dict[str, Any], path: Path) -> dict[str, Any]:
    """Write the ``eval.json`` record as ``path``, its checkpoint relative to ``path``'s folder; returns what
    it wrote."""
    record = {**record, "checkpoint": relative_to(record["checkpoint"], path.parent)}
    write_file(path, json.dumps(record, indent=2) + "\n")
    return record


def format_table(record: dict[str, Any]) -> str:
    """The evaluation as a plain-text table, the best resolution marked."""
    lines = [f"{record['model']} ({record['norm']}), trained at {record['train_resolution']} px, "
             f"{record['weights']} weights, {record['dataset']} validation set",
             f"{'resolution':>10}  {'top-1 %':>8}  {'top-5 %':>8}  {'img/s':>7}  mod 32"]
    for r in record["results"]:
        mark = "  <- best" if r == record["best"] else ""
        lines.append(f"{r['resolution']:>10}  {r['top1']:>8.2f}  {r['top5']:>8.2f}  {r['img_per_s']:>7.0f}  "
                     f"{'ok' if r['mod32_ok'] else 'BREAKS'}{mark}")
    return "\n".join(lines)
