"""The study's speed figures: every configuration's training step, fine-tuning step (half regime) and
inference, timed in **one alternating benchmark** on the device (paper Figure 1's x-axes, Sections 4.4-4.5).

Alternation (:func:`peffnet.measure.timing.alternate`: every closure warmed up, then rounds in rotating
order, medians) makes the comparison hold on a loaded machine: load that drifts over the run slows every
configuration alike. On a CPU with one intra-op thread (``--threads 1``) steps are timed in process CPU time,
which does not count the time the process waited for a core another process held. Each stage of each
configuration is timed in every memory layout (NCHW, channels_last) and precision (fp32, bf16 autocast)
when tuning, and runs with the fastest: on a CPU bf16 can speed up a grouped G16 model and slow down a
depthwise G1 one, so one shared setting would bias the comparison. The settings of a stage race: one that is
clearly slower than the best of its stage stops being timed, and bf16 is not tried at all on a device whose
measured bf16 peak is a fraction of its fp32 one (CPUs without bf16 instructions). Steps are those training
runs take (:func:`peffnet.runtime.step.train_step`): the model in the form ``peffnet train`` picks on the
device (:func:`peffnet.fusion.training_form`), the paper's optimizer (fine-tuning: SGD over the unfrozen
parts), random inputs of the run's batch and resolution; inference is the served form (proxy norm folded).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from peffnet.fusion import fold_proxy_norm, training_form
from peffnet.measure.device import measure_peak_macs
from peffnet.measure.timing import RACE_WARMUP, alternate, steady_clock
from peffnet.models import EfficientNet, create_model
from peffnet.runtime.device import device_name
from peffnet.runtime.optim import param_groups, rmsprop_tf
from peffnet.runtime.step import StepSettings, autocast, grad_scaler, train_step
from peffnet.study.config import Cell, StudyConfig
from peffnet.training import distributed
from peffnet.training.finetune import freeze_for_finetune, frozen_modules
from peffnet.training.loop import train_mode
from peffnet.training.train import prepare

STAGES = ("train", "finetune", "infer")
FINETUNE_STAGES = 2  # parts fine-tuned in the half regime (paper Section 3.4: the last two blocks)


@dataclass(frozen=True)
class Candidate:
    """One timed closure: a stage of a configuration in one memory layout and precision."""

    cell: str  # Cell.key
    stage: str  # train, finetune or infer
    resolution: int
    channels_last: bool
    amp: str  # "off" or "bf16"

    @property
    def setting(self) -> str:
        return f"{'channels_last' if self.channels_last else 'NCHW'} {'bf16' if self.amp == 'bf16' else 'fp32'}"


def _model(cfg: StudyConfig, cell: Cell, num_classes: int, in_chans: int, device: torch.device,
           channels_last: bool) -> EfficientNet:
    torch.manual_seed(0)
    model = create_model(cfg.model_name(cell.group_size), norm=cell.norm, num_classes=num_classes,
                         in_chans=in_chans, drop_rate=0.0, drop_path_rate=0.0).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _steps(cfg: StudyConfig, cell: Cell, stage: str, resolution: int, channels_last: bool, precisions: list[str],
           num_classes: int, in_chans: int, device: torch.device) -> dict[str, Callable[[], None]]:
    """The closures of one stage and layout, by precision ("off", "bf16"): they share the model. Training and
    fine-tuning take the training step (:func:`peffnet.runtime.step.train_step`)."""
    model = _model(cfg, cell, num_classes, in_chans, device, channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(cfg.batch_size, in_chans, resolution, resolution, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, num_classes, (cfg.batch_size,), device=device)
    if stage == "infer":
        model.eval()
        if cell.norm in ("lnpn", "gnpn"):
            fold_proxy_norm(model)

        def make(amp: str) -> Callable[[], None]:
            def infer() -> None:
                with torch.inference_mode(), autocast(device, amp):
                    model(x)
            return infer
        return {amp: make(amp) for amp in precisions}

    if stage == "finetune":
        freeze_for_finetune(model, FINETUNE_STAGES)
        optimizer = torch.optim.SGD(param_groups(model, 1e-5), lr=1e-3, momentum=0.0)
    else:
        optimizer = rmsprop_tf(model, lr=1e-4, decay=0.99)
    net = prepare(model, training_form(model, device, compile=False), distributed.Context(0, 1, 0, device),
                  compile=False)
    train_mode(net, frozen_modules(model, FINETUNE_STAGES).values() if stage == "finetune" else ())

    def make_train(amp: str) -> Callable[[], None]:
        settings = StepSettings(micro_batch_size=cfg.batch_size, num_classes=num_classes, amp=amp,
                                channels_last=channels_last)
        scaler = grad_scaler(device, amp)
        return lambda: train_step(net, optimizer, scaler, x, y, settings)
    return {amp: make_train(amp) for amp in precisions}


def precisions_to_try(cfg: StudyConfig, device: torch.device) -> tuple[list[str], str]:
    """fp32, and bf16 when tuning on a device whose bf16 compute is not clearly slower than its fp32 (measured:
    matmul and 1x1 convolutions; on CPUs without bf16 instructions it runs at a few percent of fp32's speed,
    and timing whole steps in it would take minutes); the reason when bf16 is left out."""
    if not cfg.tune:
        return ["off"], "not tuned (--no-tune)"
    fp32, bf16 = (measure_peak_macs(device, dtype, repeats=1) for dtype in (torch.float32, torch.bfloat16))
    if bf16 < fp32 / RACE_WARMUP:
        return ["off"], (f"bf16 not tried: its measured peak is {bf16 / fp32:.2f}x fp32's here "
                         f"({bf16 / 1e9:.1f} vs {fp32 / 1e9:.1f} GMAC/s)")
    return ["off", "bf16"], f"bf16 tried: its measured peak is {bf16 / fp32:.2f}x fp32's here"


def measure_speed(cfg: StudyConfig, cells: list[Cell], num_classes: int, in_chans: int,
                  device: torch.device) -> dict:
    """Time every stage of every configuration (in every layout and precision worth trying when tuning) in one
    alternating run, the settings of a stage racing each other (:func:`peffnet.measure.timing.alternate`: the
    clearly slower ones stop being timed); returns the ``speed.json`` record: each candidate's median img/s
    and, per configuration and stage, the fastest candidate."""
    native = cfg.native()
    precisions, why = precisions_to_try(cfg, device)
    candidates: list[Candidate] = []
    steps: list[Callable[[], None]] = []
    timed_infer: dict[tuple[int, str], str] = {}  # inference is the same for both regimes: timed once
    for cell in cells:
        stages = ["train", "finetune"] if cell.regime == "half" else ["train"]
        if (cell.group_size, cell.norm) not in timed_infer:
            timed_infer[(cell.group_size, cell.norm)] = cell.key
            stages.append("infer")
        for stage in stages:
            res = cell.train_resolution(native) if stage == "train" else native
            for channels_last in ((False, True) if cfg.tune else (False,)):
                closures = _steps(cfg, cell, stage, res, channels_last, precisions, num_classes, in_chans, device)
                for amp, step in closures.items():
                    candidates.append(Candidate(cell.key, stage, res, channels_last, amp))
                    steps.append(step)
    clock_name, clock = steady_clock(device)
    samples = alternate(steps, warmup=1, repeats=cfg.repeats, iters=1, device=device, desc="speed", clock=clock,
                        progress=cfg.progress, race=[(c.cell, c.stage) for c in candidates])
    rows = [{**asdict(c), "setting": c.setting, "img_per_s": cfg.batch_size / statistics.median(s) if s else None,
             "rounds": len(s)} for c, s in zip(candidates, samples, strict=True)]
    chosen: dict[str, dict[str, dict]] = {}
    for row in rows:
        best = chosen.setdefault(row["cell"], {}).get(row["stage"])
        if row["img_per_s"] is not None and (best is None or row["img_per_s"] > best["img_per_s"]):
            chosen[row["cell"]][row["stage"]] = row
    for cell in cells:  # the regime that was not timed for inference takes its twin's figure
        chosen[cell.key].setdefault("infer", chosen[timed_infer[(cell.group_size, cell.norm)]]["infer"])
    return {"device": device_name(device), "clock": clock_name, "batch_size": cfg.batch_size,
            "repeats": cfg.repeats, "tuned": cfg.tune, "precisions": why, "candidates": rows, "chosen": chosen}
