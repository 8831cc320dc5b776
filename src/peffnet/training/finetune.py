"""Fine-tuning the last parts of a network at a higher resolution (paper Section 3.4, "For fine-tuning").

The paper fine-tunes one of three depths, "to keep the proportion of layers that are fine-tuned
approximately independent of the model size":

1. the *last block*: the final 1x1 convolution, its normalization and the fully connected layer
   (``model.head`` + ``model.classifier``);
2. the *last two blocks*: also "all weights up to and including the previous downsampling layer",
   i.e. back to the last stride-2 stage (stage 6 of 7): stages 6-7;
3. the *last three blocks*: back "one further downsampling layer" (stage 4): stages 4-7.

The stride-2 stages are read from the stage table, not hard-coded. Frozen parts stay in eval mode, their
normalization layers included: the loop puts them there after ``model.train()`` (``Job.frozen``).

The run itself (:func:`finetune`) starts from the parent checkpoint's averaged weights and trains with
SGD without momentum, a cosine learning rate from 0.25 at global batch 512 (scaled linearly with the
batch), 2 epochs, no Mixup/CutMix and the *validation* preprocessing (Touvron et al., 2019). It is a
:class:`~peffnet.training.loop.Job` like ``peffnet train``'s and runs through the same loop and run
directory (:func:`peffnet.training.run.run`), plus ``parent`` and ``finetune_stages``.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peffnet.checkpoint import model_from_checkpoint
from peffnet.data import AUGMENTS, DECODE_MODES, build_dataset, make_loader
from peffnet.errors import ConfigError
from peffnet.files import relative_to
from peffnet.fusion import training_form
from peffnet.models import EfficientNet, ModelConfig, preset
from peffnet.models.config import B0_STAGES
from peffnet.resolution import RESOLUTION, mod32_ok
from peffnet.runtime.device import prefers_channels_last
from peffnet.runtime.optim import param_groups
from peffnet.runtime.step import StepSettings, grad_scaler
from peffnet.settings import BOOL, FLOAT, FRACTION, INT, NON_NEGATIVE, POSITIVE, Check, setting
from peffnet.training import distributed
from peffnet.training.config import AMP_MODES, DEVICES, RunSettings, split_batch
from peffnet.training.evaluate import check_data, checkpoint_file
from peffnet.training.loop import Job, TrainState
from peffnet.training.run import run
from peffnet.training.rundir import claim
from peffnet.training.train import prepare

DEPTH = Check(lambda v: v in (1, 2, 3), "1, 2 or 3 (head / + last downsampling stage / + one more)")


def check_depth(stages: object) -> int:
    """``stages`` as 1, 2 or 3, else a one-line :class:`ConfigError`."""
    if isinstance(stages, bool) or not isinstance(stages, int) or not DEPTH.test(stages):
        raise ConfigError(f"stages must be {DEPTH.text}, got {stages!r}")
    return stages


def finetuned_stage_indices(stages: int) -> list[int]:
    """0-based indices of the MBConv stages trained at depth ``stages`` (none at depth 1).

    >>> finetuned_stage_indices(1), finetuned_stage_indices(2), finetuned_stage_indices(3)
    ([], [5, 6], [3, 4, 5, 6])
    """
    stages = check_depth(stages)
    if stages == 1:
        return []
    downsampling = [i for i, stage in enumerate(B0_STAGES) if stage.stride == 2]
    return list(range(downsampling[-(stages - 1)], len(B0_STAGES)))


def finetuned_modules(model: EfficientNet, stages: int) -> dict[str, nn.Module]:
    """The top-level parts trained at depth ``stages``, by attribute name (``stages.5``, ``head``...)."""
    parts: dict[str, nn.Module] = {f"stages.{i}": model.stages[i] for i in finetuned_stage_indices(stages)}
    parts.update(head=model.head, dropout=model.dropout, classifier=model.classifier)
    return parts


def frozen_modules(model: EfficientNet, stages: int) -> dict[str, nn.Module]:
    """The top-level parts left untouched at depth ``stages`` (the stem and the earlier stages)."""
    trained = set(finetuned_stage_indices(stages))
    parts: dict[str, nn.Module] = {"stem": model.stem}
    parts.update({f"stages.{i}": s for i, s in enumerate(model.stages) if i not in trained})
    return parts


def freeze_for_finetune(model: EfficientNet, stages: int) -> list[str]:
    """Freeze everything but the last ``stages`` parts; return the names of the trainable parameters.

    Frozen parts get ``requires_grad=False``; the training loop keeps them in eval mode (dropout, stochastic
    depth and normalization statistics as in inference: :func:`peffnet.training.loop.train_mode` with
    :func:`frozen_modules`) while the trained parts train.
    """
    model.requires_grad_(False)
    for module in finetuned_modules(model, stages).values():
        module.requires_grad_(True)
    return [name for name, p in model.named_parameters() if p.requires_grad]


# --------------------------------------------------------------------------- the fine-tuning run

REFERENCE_LR, REFERENCE_BATCH = 0.25, 512
"""Section 3.4: cosine schedule from lr 0.25 at global batch 512; other batches scale it linearly."""


@dataclass
class FinetuneConfig(RunSettings):
    """Everything ``peffnet finetune`` takes; ``None`` means "auto"."""

    checkpoint: str | None = setting(None, "parent run: its checkpoint.pt or run directory", positional=True,
                                     required=True)
    resolution: int | None = setting(None, "fine-tuning (and evaluation) resolution; keep it = the training "
                                           "resolution mod 32 (`peffnet resolutions`)", INT, RESOLUTION,
                                     required=True)
    out: str | None = setting(None, "run directory of the fine-tuning", execution=True, required=True)
    stages: int = setting(2, "parts to train: 1 head, 2 + stages 6-7, 3 + stages 4-5", INT, DEPTH)
    data: str | None = setting(None, "dataset spec (default: the parent's)", group="data")
    data_dir: str | None = setting(None, "where the dataset lives", execution=True, group="data")
    subset: int | None = setting(None, "fine-tune on a fixed random subset of this many images", INT, POSITIVE,
                                 group="data")
    val_subset: int | None = setting(None, "evaluate on a fixed random subset of this many images", INT, POSITIVE,
                                     group="data")
    max_image_pixels: int | None = setting(None, "image files with more pixels are skipped unread, and counted "
                                                 "(default: PIL's Image.MAX_IMAGE_PIXELS)", INT, POSITIVE,
                                           group="data")
    augment: str | None = setting(None, "image folders and shards: the validation preprocessing fine-tuning trains "
                                        "and evaluates with, crop or shift as `peffnet train --augment` (default: "
                                        "the parent's)", choices=AUGMENTS, group="data")
    epochs: int = setting(2, "fine-tuning epochs", INT, POSITIVE, resumable=True, group="schedule")
    batch_size: int = setting(REFERENCE_BATCH, "global batch", INT, POSITIVE, group="schedule")
    micro_batch_size: int | None = setting(None, "images per pass (default: batch / processes)", INT, POSITIVE,
                                           execution=True, group="speed")
    lr: float | None = setting(None, "initial lr of the cosine schedule (default: 0.25 x batch / 512; a new value on "
                                     "resume scales the rest of the schedule)", FLOAT, POSITIVE, resumable=True,
                               group="schedule")
    weight_decay: float = setting(1e-5, "as in training, on the same parameter groups", FLOAT, NON_NEGATIVE,
                                  group="schedule")
    label_smoothing: float = setting(0.1, "as in training", FLOAT, FRACTION, group="schedule")
    seed: int = setting(0, "random seed (data order, dropout)", INT, NON_NEGATIVE, group="schedule")
    amp: str = setting("off", "mixed precision", choices=AMP_MODES, group="speed")
    channels_last: bool | None = setting(None, "NHWC memory format (default: the layout the norm trains fastest "
                                               "in on the device: channels_last on CUDA for BN, LN and LN+PN, NCHW "
                                               "for GN and on a CPU)", BOOL, execution=True, group="speed")
    device: str = setting("auto", "where to fine-tune", choices=DEVICES, execution=True, group="speed")
    workers: int | None = setting(None, "DataLoader workers (image folders)", INT, NON_NEGATIVE, execution=True,
                                  group="speed")
    decode: str = setting("auto", "where JPEGs are decoded: cpu (DataLoader workers), device (nvJPEG on the GPU) or "
                                  "auto (the faster, measured when the run starts; cpu without a GPU)",
                          choices=DECODE_MODES, execution=True, group="speed")
    eval_batch_size: int | None = setting(None, "(default: micro-batch size)", INT, POSITIVE, execution=True,
                                          group="speed")
    model: str | None = setting(None, "expected model of the checkpoint (an error if it holds another)",
                                execution=True, group="checks")
    group_size: int | None = setting(None, "expected group size", INT, POSITIVE, execution=True, group="checks")
    expansion: int | None = setting(None, "expected expansion ratio", INT, POSITIVE, execution=True,
                                    group="checks")
    norm: str | None = setting(None, "expected normalization", execution=True, group="checks")

    @property
    def peak_lr(self) -> float:
        """The cosine schedule's starting lr: ``0.25 * batch / 512`` unless set."""
        return self.lr if self.lr is not None else REFERENCE_LR * self.batch_size / REFERENCE_BATCH


def check_parent_model(model_cfg: ModelConfig, cfg: FinetuneConfig, path: str) -> None:
    """A one-line error when the user named a model (or G/E/norm) other than the checkpoint's."""
    asked = {"model": ("name", cfg.model), "group size": ("group_size", cfg.group_size),
             "expansion": ("expansion", cfg.expansion), "norm": ("norm", cfg.norm)}
    if cfg.model is not None:
        preset(cfg.model)  # unknown names are reported as such
    for what, (field, value) in asked.items():
        if value is not None and getattr(model_cfg, field) != value:
            raise ConfigError(f"checkpoint {path} holds {model_cfg.name} (G{model_cfg.group_size} "
                              f"E{model_cfg.expansion} {model_cfg.norm}), not the requested {what} {value!r}")


def finetune_job(cfg: FinetuneConfig, ctx: distributed.Context) -> Job:
    """Everything a ``peffnet finetune`` run needs, from its settings."""
    if cfg.amp == "fp16" and ctx.device.type != "cuda":
        raise ConfigError("--amp fp16 needs a CUDA device; use --amp bf16 on the CPU")
    parent_path = checkpoint_file(cfg.checkpoint).resolve()
    model, parent = model_from_checkpoint(parent_path, averaged=True)
    check_parent_model(model.cfg, cfg, str(parent_path))
    parent_res = int(parent["train_resolution"])
    if ctx.is_main and not mod32_ok(parent_res, cfg.resolution):
        print(f"warning: fine-tuning resolution {cfg.resolution} breaks r = {parent_res} (mod 32), the parent's "
              f"training resolution (paper Section 3.3)", file=sys.stderr)

    # data: validation preprocessing for training too (Section 3.4)
    spec = cfg.data or parent["data"]["spec"]
    augment = cfg.augment or parent["config"].get("augment", "crop")
    train_set = build_dataset(spec, "train", cfg.resolution, False, cfg.data_dir, subset=cfg.subset,
                              max_pixels=cfg.max_image_pixels, augment=augment)
    check_data(train_set, model.cfg, spec)
    val_set = build_dataset(spec, "val", cfg.resolution, False, cfg.data_dir, subset=cfg.val_subset,
                            max_pixels=cfg.max_image_pixels, augment=augment)
    micro = split_batch(cfg.batch_size, cfg.micro_batch_size, ctx.world_size)
    c = dataclasses.replace(cfg, checkpoint=str(parent_path), data=spec, lr=cfg.peak_lr, micro_batch_size=micro,
                            eval_batch_size=cfg.eval_batch_size or micro, augment=augment,
                            channels_last=cfg.channels_last if cfg.channels_last is not None else
                            prefers_channels_last(model.cfg.norm, ctx.device))
    train_loader = make_loader(train_set, c.batch_size, train=True, seed=c.seed, rank=ctx.rank,
                               world_size=ctx.world_size, workers=c.workers, device=ctx.device, decode=c.decode)
    val_loader = make_loader(val_set, c.eval_batch_size, train=False, rank=ctx.rank, world_size=ctx.world_size,
                             workers=c.workers, device=ctx.device, decode=c.decode)

    # model: the parent's averaged weights, all but the last `stages` parts frozen; SGD without momentum,
    # cosine schedule over the whole run, no weight averaging (the final weights are the last ones)
    trainable = freeze_for_finetune(model, c.stages)
    model = model.to(ctx.device)
    if c.channels_last:
        model = model.to(memory_format=torch.channels_last)
    form = training_form(model, ctx.device, compile=False)
    net = prepare(model, form, ctx, compile=False)
    optimizer = torch.optim.SGD(param_groups(model, c.weight_decay), lr=c.lr, momentum=0.0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=len(train_loader) * c.epochs)
    state = TrainState(model, optimizer, scheduler, grad_scaler(ctx.device, c.amp), average=None)
    step = StepSettings(micro, train_set.num_classes, c.label_smoothing, 0.0, 1.0, c.amp, c.channels_last)
    record = {"train_resolution": c.resolution, "num_classes": train_set.num_classes,
              "data": {"spec": spec, "in_chans": train_set.in_chans, "subset": c.subset},
              "classes": list(train_set.classes), "preprocessing": val_set.preprocessing.to_dict(),
              "parent": relative_to(parent_path, c.out), "parent_train_resolution": parent_res,
              "finetune_stages": c.stages}
    summary = {"trainable_params": sum(p.numel() for n, p in model.named_parameters() if n in trainable),
               "lr": c.lr, "parent": relative_to(parent_path, c.out), "parent_train_resolution": parent_res,
               "finetune_stages": c.stages}
    frozen = list(frozen_modules(model, c.stages).values())  # in the trained form (a fused stem is another module)
    return Job(name="finetune", config=c, state=state, net=net, form=form, train_loader=train_loader,
               val_loader=val_loader, step_settings=step, ctx=ctx, frozen=frozen, record=record, summary=summary,
               fixed_length="the cosine learning rate spans all --epochs (it has reached 0 at their end)")


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune as ``cfg`` says (in torchrun's process group when launched by it), starting or continuing the
    run in ``cfg.out`` as ``cfg.resume`` says; returns the summary.

    Raises:
        ConfigError: bad settings, data or checkpoint, or a run directory in use (one line).
        RunFailure: the loss became NaN/inf (the last finite checkpoint is kept), or a checkpoint could not
            be written.
        Stopped: a stop signal; the checkpoint of the step it stopped at is written.
    """
    ctx = distributed.setup(cfg.device, cfg.dist_timeout)
    with claim(Path(cfg.out), cfg.resume, cfg.keep_checkpoints, ctx, "finetune") as start:
        return run(finetune_job(cfg, ctx), start)
