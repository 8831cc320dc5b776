"""Why BatchNorm does not train in the study's short runs: the first steps of one study run, one setting changed.

Trains a G-EfficientNet-B0 on the study's data (a fixed 20 000-image Fashion-MNIST subset, batch 128, the
paper's schedule stretched from 350 epochs to 2, label smoothing 0.1, zero-initialised classifier, no dropout,
stochastic depth or Mixup: ``peffnet study``'s runs) for ``--steps`` optimizer steps, then reports the mean
training loss of the last 10 steps, top-1 on 1000 test images with the BN running statistics (eval mode) and
with each batch's own statistics, and how far a few layers' weights move per step (relative change, median over
the second half of the steps). One line of JSON per run is appended to ``--out``. docs/training.md, "Short
runs and BatchNorm", shows the results and the command of each row:

    python scripts/short_runs.py --norm bn --optimizer rmsprop_tf --out runs/short_runs.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.optim import RMSpropTF

import peffnet
from peffnet.data import build_dataset, make_loader
from peffnet.fusion import training_form
from peffnet.layers.norm_act import GN_GROUPS, BatchNormAct2d, GroupNormAct
from peffnet.runtime.optim import param_groups, rmsprop_tf
from peffnet.training import distributed
from peffnet.training.loop import evaluate
from peffnet.training.optim import recipe_scheduler
from peffnet.training.train import prepare

WATCHED = {"stem": "stem.conv.weight", "stage 2 spatial": "stages.1.0.spatial.conv.weight",
           "stage 4 expansion": "stages.3.0.expand.conv.weight", "head": "head.conv.weight"}
OPTIMIZERS = ("rmsprop_tf", "adam", "rmsprop_torch", "sgd", "adam_1d", "adam_kernels")


class Split(torch.optim.Optimizer):
    """Adam on some parameters, the paper's RMSProp (TensorFlow form) on the others."""

    def __init__(self, adam: list, rmsprop: list, lr: float, decay: float) -> None:
        self.parts = [torch.optim.Adam(adam, lr=lr), RMSpropTF(rmsprop, lr=lr, alpha=decay, eps=1e-3, momentum=0.9)]
        super().__init__(adam + rmsprop, {"lr": lr})
        self.param_groups = self.parts[0].param_groups + self.parts[1].param_groups

    def step(self, closure: None = None) -> None:
        for part in self.parts:
            part.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none)


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    """The model, its BN layers after the modules named in ``--gn-at`` replaced by GN (4 groups)."""
    if args.timm:
        model = timm.create_model("efficientnet_b0", num_classes=10, in_chans=1, drop_rate=0, drop_path_rate=0)
    else:
        model = peffnet.create_model(args.model, norm=args.norm, num_classes=10, in_chans=1, drop_rate=0.0,
                                     drop_path_rate=0.0)
    for name, module in list(model.named_modules()):
        for part in filter(None, args.gn_at.split(",")):
            if name.endswith(part) and isinstance(getattr(module, "norm", None), BatchNormAct2d):
                module.norm = GroupNormAct(module.norm.num_features, GN_GROUPS, module.norm.act)
    with torch.no_grad():
        model.classifier.weight.mul_(args.head_init_scale)
    return model.to(memory_format=torch.channels_last)


def build_optimizer(args: argparse.Namespace, model: torch.nn.Module, batch: int) -> torch.optim.Optimizer:
    lr = args.lr_scale * batch * 2**-14
    decay = args.rmsprop_decay or 1 - batch * 2**-14
    if args.optimizer == "rmsprop_tf":
        return rmsprop_tf(model, lr, decay, eps=args.eps)
    if args.optimizer == "rmsprop_torch":  # mean square from 0, eps outside the square root
        return torch.optim.RMSprop(param_groups(model, 1e-5), lr=lr, alpha=decay, eps=args.eps, momentum=0.9)
    if args.optimizer == "adam":
        return torch.optim.Adam(param_groups(model, 1e-5), lr=lr)
    if args.optimizer == "sgd":
        return torch.optim.SGD(param_groups(model, 1e-5), lr=lr, momentum=0.9)
    one_d = [p for p in model.parameters() if p.ndim <= 1]
    kernels = [p for p in model.parameters() if p.ndim > 1]
    adam, rmsprop = (one_d, kernels) if args.optimizer == "adam_1d" else (kernels, one_d)
    return Split(adam, rmsprop, lr, decay)


def batch_statistics_top1(model: torch.nn.Module, loader: object) -> float:
    """Top-1 with every BN layer normalizing by the batch's own statistics (running averages untouched)."""
    model = copy.deepcopy(model).train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.0
    hits = images = 0
    with torch.no_grad():
        for x, y in loader:
            hits += (model(x.contiguous(memory_format=torch.channels_last)).argmax(1) == y).sum().item()
            images += len(y)
    return 100.0 * hits / images


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="g16_efficientnet_b0")
    p.add_argument("--norm", default="bn")
    p.add_argument("--timm", action="store_true", help="timm's efficientnet_b0 (BN) instead of --model")
    p.add_argument("--gn-at", default="", help="comma-separated module names (head, project, stem) whose BN is GN")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="rmsprop_tf")
    p.add_argument("--lr-scale", type=float, default=0.25, help="lr = lr_scale x 128 x 2^-14")
    p.add_argument("--rmsprop-decay", type=float, help="default 1 - 128 x 2^-14")
    p.add_argument("--eps", type=float, default=1e-3, help="RMSProp eps")
    p.add_argument("--recipe-epochs", type=float, default=350, help="0: the epoch settings literally")
    p.add_argument("--warmup-epochs", type=float, default=5)
    p.add_argument("--decay-epochs", type=float, default=2.4)
    p.add_argument("--head-init-scale", type=float, default=0.0)
    p.add_argument("--tag", default="")
    p.add_argument("--out", type=Path, default=Path("runs/short_runs.jsonl"))
    args = p.parse_args()

    torch.manual_seed(0)
    batch = 128
    train = build_dataset("fashion-mnist", "train", args.resolution, True, subset=20000, translate=2)
    loader = make_loader(train, batch, train=True, seed=0)
    model = build_model(args)
    cpu = torch.device("cpu")
    net = prepare(model, training_form(model, cpu, False), distributed.Context(0, 1, 0, cpu), False)
    optimizer = build_optimizer(args, model, batch)
    scale = 2 / args.recipe_epochs if args.recipe_epochs else 1.0  # the study's 2 epochs
    scheduler = recipe_scheduler(optimizer, len(loader), args.warmup_epochs * scale, args.decay_epochs * scale, 0.97)
    watched = {label: dict(model.named_parameters()).get(name) for label, name in WATCHED.items()}
    moves: dict[str, list[float]] = {label: [] for label, w in watched.items() if w is not None}
    losses, start = [], time.time()
    net.train()
    while len(losses) < args.steps:
        loader.set_epoch(len(losses) // len(loader))
        for x, y in loader:
            before = {label: watched[label].detach().clone() for label in moves}
            loss = F.cross_entropy(net(x.contiguous(memory_format=torch.channels_last)), y, label_smoothing=0.1)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            losses.append(loss.item())
            for label, w in before.items():
                moves[label].append(((watched[label].detach() - w).norm() / w.norm()).item())
            if len(losses) % 10 == 0:
                print(f"step {len(losses)} loss {statistics.mean(losses[-10:]):.3f}", flush=True)
            if len(losses) >= args.steps:
                break
    val = make_loader(build_dataset("fashion-mnist", "val", args.resolution, False, subset=1000), 200, train=False)
    record = {"tag": args.tag, "args": {k: v for k, v in vars(args).items() if k != "out"},
              "loss_first10": statistics.mean(losses[:10]), "loss_last10": statistics.mean(losses[-10:]),
              "top1_eval": evaluate(model, val, channels_last=True)[0],
              "top1_batch_statistics": batch_statistics_top1(model, val),
              "relative_step": {label: statistics.median(v[len(v) // 2:]) for label, v in moves.items()},
              "seconds": time.time() - start}
    print(json.dumps(record))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
