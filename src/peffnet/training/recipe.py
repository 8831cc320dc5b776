"""The paper's whole resolution pipeline in one call (Sections 3.3, 3.4 and 4.3).

1. **train** at half resolution (``native - 32k`` closest to ``native / sqrt(2)``) with ``peffnet train``;
2. **fine-tune** the last parts at a higher resolution (default: native) with ``peffnet finetune``;
3. **evaluate** the fine-tuned model over the test sizes ``= r_train (mod 32)`` (and, to show what
   fine-tuning adds, the half-resolution model at the fine-tuning size);
4. **summarise** accuracy, time and throughput of each stage in ``summary.md`` and ``summary.json``.

With ``baseline=True`` it also trains the same model at the native resolution for the same epochs and
evaluates it over the same sizes: the paper's "Native" column (Tables 4-5) beside its "Half".

Fashion-MNIST (28 px images on the 32 px canvas of :mod:`peffnet.data`) has no native EfficientNet
size; we take **64** (:data:`SMALL_IMAGE_NATIVE`): its half by the rule is 32, the canvas itself, and
fine-tuning/testing at 64 and 96 keep the mod-32 rule. See ``docs/resolution.md``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from peffnet.data import in_memory
from peffnet.errors import ConfigError
from peffnet.files import write_file
from peffnet.models import preset
from peffnet.resolution import RESOLUTION, half_resolution, mod32_ok, test_resolutions
from peffnet.settings import BOOL, FLOAT, INT, INTS, NON_NEGATIVE, POSITIVE, Settings, setting
from peffnet.training import distributed
from peffnet.training.config import AMP_MODES, DEVICES, TrainConfig
from peffnet.training.evaluate import evaluate_checkpoint, write_eval
from peffnet.training.finetune import DEPTH, FinetuneConfig, finetune
from peffnet.training.train import train

SMALL_IMAGE_NATIVE = 64
"""The "native" size we give the 28/32 px datasets (fashion-mnist, synthetic): half = 32, the canvas."""

SHORT_RUN_LR_SCALE = 1.0
"""The training stage's lr on the small datasets: the paper's full B x 2^-14 (``lr_scale`` 1), where ``peffnet
train``'s small-dataset default is a quarter of it. That quarter is for runs of tens of epochs, in which the full
lr diverged; the recipe's one-epoch run is all warm-up and early decay, and trained to 82.1 % with the full lr
against 75.9 % with the quarter (2000 validation images; docs/resolution.md). ``--lr-scale`` overrides it."""

SHORT_RUN_FINETUNE_LR = 0.15
"""Fine-tuning lr of the recipe and the study on the small datasets (SGD at batch 256). With the reference
initialisation of grouped convolutions, from the recipe's training stage: 0.1 / 0.15 gave 83.09 / 83.45 % test
top-1, 0.2 made the loss jump; from a parent trained at a quarter of the lr, 0.05 / 0.1 / 0.2 / 0.4 gave
75.4 / 79.6 / 81.3 % / divergence on 2000 validation images (docs/resolution.md, "Fine-tuning lr")."""


@dataclass
class RecipeConfig(Settings):
    """Settings of ``peffnet recipe``; the defaults take 5-8 minutes on 2 CPU cores (Fashion-MNIST)."""

    out: str | None = setting(None, "recipe directory (train/, finetune/, native/, summaries)", execution=True,
                              required=True)
    data: str = setting("fashion-mnist", "dataset spec")
    model: str = setting("g16_efficientnet_b0", "model name (see `peffnet models`)")
    norm: str = setting("lnpn", "normalization (default: the paper's LN + proxy norm)")
    native: int | None = setting(None, "native size (default: 64 for fashion-mnist/synthetic, else the model's)",
                                 INT, RESOLUTION, group="resolutions")
    train_resolution: int | None = setting(None, "(default: half of native, `peffnet resolutions`)", INT,
                                           RESOLUTION, group="resolutions")
    finetune_resolution: int | None = setting(None, "(default: native)", INT, RESOLUTION, group="resolutions")
    test_resolutions: list[int] | None = setting(None, "comma-separated (default: = r_train (mod 32) from r_train "
                                                       "to native + 32)", INTS, RESOLUTION, group="resolutions")
    epochs: int = setting(1, "training epochs", INT, POSITIVE, group="schedule")
    batch_size: int = setting(128, "training global batch", INT, POSITIVE, group="schedule")
    subset: int | None = setting(None, "train on a fixed random subset of this many images", INT, POSITIVE,
                                 group="schedule")
    lr_scale: float | None = setting(None, "multiplier of the paper's lr B x 2^-14 in the training stages (default: "
                                           "1 on fashion-mnist/synthetic, as SHORT_RUN_LR_SCALE explains; `peffnet "
                                           "train`'s default for image folders)", FLOAT, POSITIVE, group="schedule")
    train_config: str | None = setting(None, "YAML of `peffnet train` settings of the training stages (over "
                                             "`peffnet train`'s defaults for the dataset)", group="schedule")
    finetune_stages: int = setting(2, "parts to fine-tune: 1, 2 or 3", INT, DEPTH, group="schedule")
    finetune_epochs: int = setting(2, "fine-tuning epochs (the paper's)", INT, POSITIVE, group="schedule")
    finetune_batch_size: int = setting(256, "fine-tuning global batch", INT, POSITIVE, group="schedule")
    finetune_lr: float | None = setting(None, "initial lr of the cosine schedule (default: "
                                              f"{SHORT_RUN_FINETUNE_LR} for fashion-mnist/synthetic, else 0.25 x "
                                              "batch / 512)", FLOAT, POSITIVE,
                                        group="schedule")
    finetune_subset: int | None = setting(20000, "fine-tune on this many training images (docs/resolution.md, "
                                                 "\"Fine-tuning length\")", INT, POSITIVE, group="schedule")
    val_subset: int | None = setting(1000, "validation images of the per-epoch evaluations inside training and "
                                           "fine-tuning", INT, POSITIVE, group="schedule")
    test_subset: int | None = setting(None, "validation images of the final evaluations (default: all)", INT,
                                      POSITIVE, group="schedule")
    sweep_subset: int = setting(1000, "validation images each test size is evaluated on; the best size is then "
                                      "evaluated on all --test-subset images (0: every size on all of them)", INT,
                                NON_NEGATIVE, group="schedule")
    baseline: bool = setting(False, "also train at the native resolution, for comparison", BOOL, group="schedule")
    seed: int = setting(0, "random seed", INT, NON_NEGATIVE, group="schedule")
    data_dir: str | None = setting(None, "where the dataset lives", execution=True, group="execution")
    device: str = setting("auto", "where to run", choices=DEVICES, execution=True, group="execution")
    amp: str = setting("off", "mixed precision", choices=AMP_MODES, group="execution")
    channels_last: bool = setting(True, "NHWC memory format in training and fine-tuning (1.2-1.3x faster on "
                                        "this project's CPUs)", BOOL, execution=True, group="execution")
    threads: int | None = setting(None, "torch CPU threads (default: torch's)", INT, POSITIVE, execution=True,
                                  group="execution")
    resume: bool = setting(False, "continue an interrupted recipe in --out", BOOL, execution=True,
                           group="execution")
    progress: bool = setting(True, "show progress bars", BOOL, execution=True, group="execution")

    def sizes(self) -> tuple[int, int, int, list[int]]:
        """(native, training, fine-tuning, test) resolutions, defaults filled in."""
        if self.native is not None:
            native = self.native
        elif not in_memory(self.data):
            native = preset(self.model).resolution
        else:
            native = SMALL_IMAGE_NATIVE
        train_res = self.train_resolution or half_resolution(native)
        ft_res = self.finetune_resolution or native
        tests = self.test_resolutions or test_resolutions(train_res, train_res, native + 32)
        return native, train_res, ft_res, tests


def _stage_state(run_dir: Path, resume: bool) -> tuple[dict[str, Any] | None, bool]:
    """(summary of a finished stage when resuming, whether to resume its checkpoint); refuses to overwrite."""
    has_checkpoint = (run_dir / "checkpoint.pt").exists()
    if has_checkpoint and not resume:
        raise ConfigError(f"{run_dir.parent} already holds a recipe run; add --resume to continue it or choose "
                          f"another --out")
    summary = run_dir / "summary.json"
    return (json.loads(summary.read_text()) if resume and summary.exists() else None), resume and has_checkpoint


def _train_config(cfg: RecipeConfig, run_dir: Path, resolution: int, resume: bool) -> TrainConfig:
    """The ``peffnet train`` settings of a training stage (validated now, before anything runs): ``peffnet
    train``'s defaults for the dataset (:data:`~peffnet.training.config.SMALL_DATA_DEFAULTS` on the small
    datasets, with the recipe's :data:`SHORT_RUN_LR_SCALE`), under ``--train-config``, under the recipe's own
    settings."""
    short = {"lr_scale": SHORT_RUN_LR_SCALE} if in_memory(cfg.data) else {}
    settings = {**short, **(TrainConfig.read_yaml(cfg.train_config) if cfg.train_config else {})}
    flags = {"lr_scale": cfg.lr_scale, "model": cfg.model, "norm": cfg.norm, "data": cfg.data, "data_dir": cfg.data_dir,
             "resolution": str(resolution), "epochs": cfg.epochs, "batch_size": cfg.batch_size,
             "subset": cfg.subset, "val_subset": cfg.val_subset, "seed": cfg.seed, "device": cfg.device,
             "amp": cfg.amp, "channels_last": cfg.channels_last, "out": str(run_dir), "resume": resume,
             "progress": cfg.progress}
    return TrainConfig.from_layers(settings, flags)


def _finetune_config(cfg: RecipeConfig, parent: Path, run_dir: Path, resolution: int, resume: bool
                     ) -> FinetuneConfig:
    """The ``peffnet finetune`` settings of the fine-tuning stage (validated now)."""
    small = in_memory(cfg.data)
    lr = cfg.finetune_lr if cfg.finetune_lr is not None else (SHORT_RUN_FINETUNE_LR if small else None)
    return FinetuneConfig(
        checkpoint=str(parent), resolution=resolution, out=str(run_dir), stages=cfg.finetune_stages, lr=lr,
        data=cfg.data, data_dir=cfg.data_dir, subset=cfg.finetune_subset, val_subset=cfg.val_subset,
        epochs=cfg.finetune_epochs, batch_size=cfg.finetune_batch_size, seed=cfg.seed, amp=cfg.amp,
        channels_last=cfg.channels_last, device=cfg.device, resume=resume, progress=cfg.progress)


def _evaluate(cfg: RecipeConfig, run_dir: Path, resolutions: list[int]) -> dict[str, Any]:
    """Sweep ``resolutions`` on ``sweep_subset`` validation images (a fixed subset), then evaluate the best size
    on all ``test_subset`` images: ``results`` are the sweep's, ``best`` the final record. The record also goes
    to ``run_dir/eval.json``."""
    def sweep(sizes: list[int], subset: int | None) -> dict[str, Any]:
        return evaluate_checkpoint(run_dir, cfg.data, sizes, data_dir=cfg.data_dir, val_subset=subset,
                                   device=cfg.device, amp=cfg.amp, progress=cfg.progress)

    start = time.perf_counter()
    two_phases = len(resolutions) > 1 and cfg.sweep_subset and cfg.sweep_subset < (cfg.test_subset or math.inf)
    record = sweep(resolutions, cfg.sweep_subset if two_phases else cfg.test_subset)
    if two_phases:
        record["best"] = sweep([record["best"]["resolution"]], cfg.test_subset)["best"]
    record["wall_time_s"] = time.perf_counter() - start
    if distributed.rank() == 0:  # under torchrun every rank evaluates its shard; one writes
        write_eval(record, run_dir / "eval.json")
    return record


def run_recipe(cfg: RecipeConfig) -> dict[str, Any]:
    """Run the pipeline into ``cfg.out`` (``train/``, ``finetune/``, optionally ``native/``, and the
    summaries); returns the ``summary.json`` record. Every setting is checked before the first stage runs;
    with ``resume`` finished stages are kept and an interrupted one continues from its checkpoint."""
    native, train_res, ft_res, tests = cfg.sizes()
    preset(cfg.model, norm=cfg.norm)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    plan = {"train": (out / "train", train_res), **({"native": (out / "native", native)} if cfg.baseline else {})}
    done, configs = {}, {}
    for name, (run_dir, resolution) in plan.items():
        done[name], resume = _stage_state(run_dir, cfg.resume)
        configs[name] = _train_config(cfg, run_dir, resolution, resume)
    done["finetune"], resume = _stage_state(out / "finetune", cfg.resume)
    ft_config = _finetune_config(cfg, out / "train", out / "finetune", ft_res, resume)

    t0 = time.perf_counter()
    stages = {"train": done["train"] or train(configs["train"])}
    stages["finetune"] = done["finetune"] or finetune(ft_config)
    evals = {"half": _evaluate(cfg, out / "train", sorted({train_res, ft_res})),
             "finetuned": _evaluate(cfg, out / "finetune", tests)}
    if cfg.baseline:
        stages["native"] = done["native"] or train(configs["native"])
        evals["native"] = _evaluate(cfg, out / "native", tests)
    summary = {
        "config": cfg.recorded_in(out).to_dict(), "native": native, "train_resolution": train_res,
        "finetune_resolution": ft_res, "stages": {name: _stage_record(st) for name, st in stages.items()},
        "evaluations": {name: {"results": e["results"], "best": e["best"], "wall_time_s": e["wall_time_s"]}
                        for name, e in evals.items()},
        "half_wall_time_s": stages["train"]["wall_time_s"] + stages["finetune"]["wall_time_s"],
        "native_wall_time_s": stages["native"]["wall_time_s"] if cfg.baseline else None,
        "recipe_wall_time_s": time.perf_counter() - t0,
        "device": stages["train"]["device"], "torch": torch.__version__,
    }
    if distributed.rank() == 0:
        write_file(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        write_file(out / "summary.md", format_summary(summary))
    return summary


def result_at(summary: dict[str, Any], model: str, resolution: int) -> dict[str, Any] | None:
    """The sweep's evaluation of ``model`` ("half", "finetuned", "native") at ``resolution``, if measured (the
    final one at the best size is ``summary["evaluations"][model]["best"]``)."""
    evaluation = summary["evaluations"].get(model)
    return next((r for r in evaluation["results"] if r["resolution"] == resolution), None) if evaluation else None


def _stage_record(s: dict[str, Any]) -> dict[str, Any]:
    """The fields of a run's ``summary.json`` the recipe reports for one stage."""
    keys = ("train_resolution", "epochs", "steps", "batch_size", "top1", "top5", "wall_time_s", "train_time_s",
            "train_img_per_s", "params", "macs", "finetune_stages", "trainable_params")
    return {k: s[k] for k in keys if k in s}


MODEL_LABELS = {"half": "trained at half resolution, not fine-tuned", "finetuned": "half + fine-tuned",
                "native": "trained at native resolution"}


def format_summary(s: dict[str, Any]) -> str:
    """``summary.md``: time and throughput of each stage, then every model over the test resolutions."""
    c = s["config"]
    lines = [f"# Resolution recipe: {c['model']} ({c['norm']}) on {c['data']}", "",
             f"Native {s['native']} px; training at half resolution {s['train_resolution']} px, fine-tuning "
             f"{c['finetune_stages']} part(s) at {s['finetune_resolution']} px (paper Sections 3.3-3.4). "
             f"Device: {s['device']}, torch {s['torch']}. Whole recipe: {s['recipe_wall_time_s']:.0f} s.", "",
             f"| stage | resolution | epochs | steps x batch | wall time s | train img/s | top-1 % on "
             f"{c['val_subset'] or 'all'} val images |", "|---|---|---|---|---|---|---|"]
    for name, st in s["stages"].items():
        lines.append(f"| {name} | {st['train_resolution']} | {st['epochs']} | {st['steps']} x {st['batch_size']} | "
                     f"{st['wall_time_s']:.0f} | {st['train_img_per_s']:.0f} | {st['top1']:.2f} |")
    sizes = sorted({r["resolution"] for e in s["evaluations"].values() for r in e["results"]})
    lines += ["", "Top-1 % per test resolution (r_test = r_train mod 32; * = best of the model) on the sweep's "
                  "validation images, and the best size's top-1 on the final evaluation's:", "",
              "| model | sweep images | " + " | ".join(f"{r} px" for r in sizes) + " | final images | best: top-1 % |",
              "|---" * (len(sizes) + 4) + "|"]
    for name, e in s["evaluations"].items():
        cells = []
        for size in sizes:
            r = result_at(s, name, size)
            cells.append("" if r is None else f"{r['top1']:.2f}{'*' if size == e['best']['resolution'] else ''}")
        best = e["best"]
        lines.append(f"| {MODEL_LABELS[name]} | {e['results'][0]['images']} | " + " | ".join(cells)
                     + f" | {best['images']} | {best['top1']:.2f} at {best['resolution']} px |")
    lines += [""] + [f"Evaluation, {MODEL_LABELS[name]}: {e['wall_time_s']:.0f} s ("
                     + ", ".join(f"{r['img_per_s']:.0f} img/s at {r['resolution']} px" for r in e["results"]) + ")."
                     for name, e in s["evaluations"].items()]
    if s["native_wall_time_s"] is not None:
        lines += ["", f"Training wall time: half + fine-tune {s['half_wall_time_s']:.0f} s, native "
                      f"{s['native_wall_time_s']:.0f} s."]
    if not all(mod32_ok(s["train_resolution"], r["resolution"]) for r in s["evaluations"]["finetuned"]["results"]):
        lines += ["", "Warning: some test resolutions break r_test = r_train (mod 32)."]
    return "\n".join(lines) + "\n"
