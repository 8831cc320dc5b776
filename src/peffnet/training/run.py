"""Running a :class:`~peffnet.training.loop.Job`: the files around the loop, the same for training and
fine-tuning (formats in docs/formats.md).

:func:`run` reads top to bottom: restore the checkpoint :func:`peffnet.training.rundir.claim` chose (applying
the settings that may change on resume), print the banner, write ``config.yaml``, run the epochs
(:func:`~peffnet.training.loop.fit`) with per-step logs and checkpoints while stop signals are caught
(:mod:`peffnet.training.signals`), evaluate the final weights, write the last checkpoint and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import torch
import yaml

from peffnet.checkpoint import FORMAT, load_weights, non_finite
from peffnet.errors import ConfigError, RunFailure, WriteFailure
from peffnet.files import relative_to, write_file
from peffnet.models.config import DEFAULT_NORM, split_norm
from peffnet.models.profile import config_macs
from peffnet.runtime.device import device_name, peak_memory_bytes, reset_peak_memory
from peffnet.training import distributed
from peffnet.training.loop import Hooks, Job, Progress, TrainState, diverged, fit
from peffnet.training.metrics import MetricsLogger
from peffnet.training.rundir import Start
from peffnet.training.signals import StopRequests
from peffnet.version import __version__

RNG_SCHEME = "global RNG reseeded from (seed, step, rank) before every step; data randomness from (seed, epoch, index)"


def checkpoint_entries(job: Job) -> dict[str, Any]:
    """What a checkpoint holds (docs/formats.md): format, model config, live and final weights, optimizer,
    scheduler and scaler states, position, progress, the resolved settings, plus the job's own entries."""
    s = job.state
    return {"format": FORMAT, "model_config": dataclasses.asdict(s.model.cfg), "model": s.model.state_dict(),
            "averaged": s.final_model().state_dict(), "optimizer": s.optimizer.state_dict(),
            "scheduler": s.scheduler.state_dict(), "scaler": s.scaler.state_dict(),
            "epoch": s.step // job.steps_per_epoch, "step": s.step, "progress": dataclasses.asdict(s.progress),
            "rng": {"seed": job.config.seed, "scheme": RNG_SCHEME}, "config": job.config.recorded_in(job.out).to_dict(),
            **job.record}


def restore(state: TrainState, checkpoint: dict[str, Any], steps_per_epoch: int, what: str) -> None:
    """Load a checkpoint's entries into ``state`` (the inverse of :func:`checkpoint_entries`)."""
    load_weights(state.model, checkpoint["model"], what)
    if state.average is not None:
        load_weights(state.average.module, checkpoint["averaged"], what)
        state.average.epochs_seen = checkpoint["step"] // steps_per_epoch
    try:
        state.optimizer.load_state_dict(checkpoint["optimizer"])
        state.scheduler.load_state_dict(checkpoint["scheduler"])
        state.scaler.load_state_dict(checkpoint["scaler"])
    except (KeyError, ValueError, RuntimeError) as err:
        raise ConfigError(f"{what} has an optimizer/scheduler state this run cannot use: {err}") from None
    state.step = checkpoint["step"]
    known = {f.name for f in dataclasses.fields(Progress)}
    state.progress = Progress(**{k: v for k, v in checkpoint["progress"].items() if k in known})


def apply_changes(job: Job, changes: dict[str, tuple[Any, Any]], what: str) -> list[str]:
    """Apply the settings that changed since the checkpoint (those declared ``resumable``) to the restored
    state, record the resume in the progress, and return one note per change.

    A new ``lr`` scales the learning rate from the resume step on: the schedule's remaining curve times
    new / old (warm-up, staircase and cosine alike). A new ``epochs`` lengthens (or shortens) the run where
    its schedule does not depend on the length (``job.fixed_length`` says why it does otherwise).
    """
    state, notes = job.state, []
    if "epochs" in changes:
        before, now = changes["epochs"]
        if job.fixed_length:
            raise ConfigError(f"{what} was trained for {before} epoch(s) and cannot go on to {now}: {job.fixed_length}")
        if state.step > now * job.steps_per_epoch:
            raise ConfigError(f"{what} is at step {state.step}, past the {now} epoch(s) asked for")
        notes.append(f"epochs {before} -> {now}")
    if "lr" in changes:
        before, now = changes["lr"]
        for group in state.optimizer.param_groups:
            group["lr"] *= now / before
            if "initial_lr" in group:
                group["initial_lr"] *= now / before
        state.scheduler.base_lrs = [lr * now / before for lr in state.scheduler.base_lrs]
        notes.append(f"lr {before:g} -> {now:g} (the schedule from here on x {now / before:g})")
    notes += [f"{name} {old!r} -> {new!r}" for name, (old, new) in changes.items() if name not in ("lr", "epochs")]
    state.progress.resumes.append({"step": state.step, "changed": {k: list(v) for k, v in changes.items()}})
    return notes


def banner(job: Job) -> str:
    """The line a run starts with: what trains, in which form, where, how long."""
    m, ctx = job.state.model.cfg, job.ctx
    where = f"{ctx.world_size} processes" if ctx.distributed else "1 process"
    bare_default = split_norm(m.name)[1] is None and m.norm == DEFAULT_NORM
    norm = f"{m.norm}: the bare name's default; _lnpn names the paper's LN+PN" if bare_default else m.norm
    return (f"peffnet {job.name}: {m.name} (G{m.group_size} E{m.expansion} {norm}), {job.form} form, "
            f"{where} on {device_name(ctx.device)}, {job.epochs} epoch(s) of {job.steps_per_epoch} steps x "
            f"{job.global_batch} images -> {job.out}")


def run(job: Job, start: Start) -> dict[str, Any]:
    """Run ``job`` from ``start`` (a new run, or the checkpoint to continue) and return its ``summary.json``
    record. SIGTERM, SIGINT and SIGUSR1 stop it after the current step, with a checkpoint.

    Raises:
        WriteFailure: a file of the run could not be written; the line says which checkpoint the same command
            resumes from.
    """
    try:
        return _run(job, start)
    except WriteFailure as err:
        if err.note:  # a checkpoint's failure names the intact checkpoints itself
            raise
        last = start.checkpoints.describe_last()
        raise err.noting(f"the same command resumes from {last}" if start.checkpoints.records
                         else "no checkpoint was written yet") from None


def _run(job: Job, start: Start) -> dict[str, Any]:
    t0, ctx, state, checkpoint = time.perf_counter(), job.ctx, job.state, start.checkpoint
    reset_peak_memory(ctx.device)
    notes = []
    if checkpoint is not None:
        what = f"the run in {job.out}"
        changes = job.config.resume_changes(checkpoint["config"], what)
        restore(state, checkpoint, job.steps_per_epoch, f"checkpoint {start.checkpoints.describe_last()}")
        notes = [f"resuming from {start.checkpoints.describe_last()}",
                 *apply_changes(job, changes, what)]
    if ctx.is_main:
        print(banner(job), flush=True)
        for note in notes:
            print(f"peffnet {job.name}: {note}", flush=True)
        job.out.mkdir(parents=True, exist_ok=True)
        write_file(job.out / "config.yaml", yaml.safe_dump(job.config.recorded_in(job.out).to_dict(), sort_keys=False))
        if state.step < job.epochs * job.steps_per_epoch:  # a summary describes a finished run only
            (job.out / "summary.json").unlink(missing_ok=True)
    logger = MetricsLogger(job.out, ctx.is_main, resume_step=state.step if checkpoint is not None else None)
    wall_before = state.progress.wall_time_s

    def elapsed() -> float:
        return wall_before + time.perf_counter() - t0

    def save() -> None:
        """Checkpoint the run: every rank joins the gather of skipped files and checks that the weights are
        finite (they are the same on every rank); rank 0 writes, and every rank learns whether it could."""
        loaders = (job.train_loader, job.val_loader)
        for name in ("skipped", "oversized"):
            new = distributed.all_gather_lists([p for loader in loaders for p in getattr(loader, name)])
            setattr(state.progress, name, sorted(set(getattr(state.progress, name)).union(new)))
            for loader in loaders:
                getattr(loader, name).clear()
        state.progress.wall_time_s = elapsed()
        entries = checkpoint_entries(job)
        bad = [f"{key} weights ({names[0]}...)" for key in ("model", "averaged") if (names := non_finite(entries[key]))]
        if bad:
            raise diverged(f"non-finite {bad[0]}, not checkpointed", state.step, f"{job.label} "
                           f"{-(-state.step // job.steps_per_epoch)}", hooks)
        error = None
        if ctx.is_main:
            try:
                start.checkpoints.save(entries)
            except RunFailure as err:
                error = str(err)
        error = distributed.broadcast_object(error)
        if error is not None:
            raise RunFailure(error)

    with StopRequests(announce=ctx.is_main) as stop:
        hooks = Hooks(save, start.checkpoints.describe_last, elapsed, stop.agreed)
        live = fit(job, logger, hooks)
        if live is None:  # nothing was left to run (a finished run resumed): measure the live weights here
            live = job.accuracy(state.model)
        final = live if state.final_model() is state.model else job.accuracy(state.final_model())
        save()
    summary = make_summary(job, final, live, peak_memory_bytes(ctx.device))
    if ctx.is_main:
        write_file(job.out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def make_summary(job: Job, final: tuple[float, float], live: tuple[float, float], peak_memory: int
                 ) -> dict[str, Any]:
    """``summary.json`` (docs/formats.md): accuracy of the final and the live weights, time, throughput,
    memory, cost and identity of the run, plus the job's own fields."""
    s, m, c = job.state, job.state.model.cfg, job.config
    resolution = job.record["train_resolution"]
    eval_resolution = getattr(c, "eval_resolution", None) or resolution
    macs = config_macs(m, eval_resolution)
    return {
        "model": m.name, "group_size": m.group_size, "expansion": m.expansion, "norm": m.norm,
        "model_form": job.form, "train_resolution": resolution, "eval_resolution": eval_resolution,
        "top1": final[0], "top5": final[1],
        "final_weights": ("exponential average of per-epoch weights" if s.average is not None
                          else "weights at the end of the last epoch"),
        "live_top1": live[0], "live_top5": live[1],
        "train_img_per_s": s.progress.train_img_per_s, "wall_time_s": s.progress.wall_time_s,
        "train_time_s": s.progress.train_time_s, "peak_memory_bytes": peak_memory,
        "params": sum(p.numel() for p in s.model.parameters()), "macs": macs,
        "epochs": job.epochs, "steps": job.steps_per_epoch * job.epochs, "batch_size": job.global_batch,
        "micro_batch_size": job.step_settings.micro_batch_size, "world_size": job.ctx.world_size,
        "amp": job.step_settings.amp,
        "dataset": job.record["data"]["spec"], "num_classes": job.record["num_classes"],
        "skipped_images": len(s.progress.skipped), "skipped_files": s.progress.skipped[:100],
        "oversized_images": len(s.progress.oversized), "resumes": s.progress.resumes,
        "config_hash": c.config_hash(), "device": device_name(job.ctx.device), "torch": torch.__version__,
        "peffnet": __version__, "checkpoint": relative_to(job.out / "checkpoint.pt", job.out), **job.summary,
    }
