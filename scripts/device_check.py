"""The GPU check: what a lent GPU must answer, in one command that fits a short lease (docs/benchmarks.md).

    PYTHONPATH=src python3 scripts/device_check.py --out $OUT           # on the GPU machine: <= 7 min on an H100
    python scripts/device_check.py --device cpu --quick --out DIR       # the dry run: every check at tiny sizes
    bash scripts/gpu_env.sh                                             # the dry run under the GPU machine's versions

Output, all of it small and directly under ``--out`` (a borrowed machine returns a few files, no folders):
``device_check.json`` (every check's result, rewritten the moment each check ends, so that a kill at the time
limit keeps all that finished), ``RESULTS.md`` (the same, to read), ``device_check.log`` (the progress lines) and,
with ``--suite``, the benchmark suite's ``<device>.json`` and ``suite.md``. Runs, checkpoints and exports go to
a temporary folder that is removed.

Time: every check has a budget (seconds on an H100; with ``--quick``, on a 2-core CPU). A check the time left
(``--budget``) cannot hold is skipped and recorded with the reason; a check that runs past twice its budget
is recorded as timed out and the command ends. Correctness comes first, speed next, the process group last:

- ``train_steps``: the training step (:func:`peffnet.runtime.step.train_step`) of G1-BN, G16-GN and G16-LN+PN
  (plain and fused) in fp32, bf16 and fp16 (loss-scaled, as training scales it) against float64 on the CPU:
  the loss, the gradient's cosine overall and the smallest cosine of any parameter tensor, later steps finite.
- ``fold``: folded LN+PN and GN+PN equal the plain models in float64 on the device (fp32 with TF32 recorded).
- ``sync_free``: training steps of ``peffnet train`` (in-memory data batched on the device, Mixup, CutMix,
  label smoothing) counted for host synchronisations under ``torch.cuda.set_sync_debug_mode``.
- ``checkpoint_to_cpu``, ``export``: a run trained on the device continues on the CPU; its checkpoint exports
  to ONNX, verified by onnxruntime.
- ``loader``: the JPEG input pipeline against the model (:func:`peffnet.measure.loader.device_loader_check`):
  a photo-like folder made on the spot, loader img/s per CPU worker and with nvJPEG on the device, against
  G16-LN+PN's training img/s at 128 and 224 px: does the loader keep up (docs/data.md).
- ``speed_train``, ``speed_infer``: :func:`peffnet.measure.bench.run_bench` in alternation, eager: timm's B0,
  G1-BN, G16-GN, G16-LN+PN in NCHW and channels_last (and LN+PN's other form), the three at half resolution;
  bf16 autocast on a GPU (fp32 on a CPU); MAC utilization against the peak measured in that precision; and
  whether the layout and form ``peffnet train`` picks by default on the device are the fastest.
- ``compile``: a ``torch.compile`` training step of G16-LN+PN, one graph, matches eager; its speed against eager.
- ``suite`` (``--suite`` only): ``benchmarks/run_suite.py``'s comparisons at GPU sizes.
- ``ddp``: a one-process NCCL group (60 s timeout) with micro-batches under ``no_sync``, last.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import timedelta  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if (REPO / "src" / "peffnet").is_dir() and str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))  # run from the source tree without installing

import peffnet  # noqa: E402
from peffnet.fusion import training_form  # noqa: E402
from peffnet.measure.bench import BenchOptions, run_bench  # noqa: E402
from peffnet.measure.device import DevicePeaks, measure_device  # noqa: E402
from peffnet.measure.loader import device_loader_check  # noqa: E402
from peffnet.measure.subjects import BenchSpec  # noqa: E402
from peffnet.measure.timing import alternate  # noqa: E402
from peffnet.models import build, preset  # noqa: E402
from peffnet.resolution import half_resolution  # noqa: E402
from peffnet.runtime.device import prefers_channels_last  # noqa: E402
from peffnet.runtime.optim import rmsprop_tf  # noqa: E402
from peffnet.runtime.step import StepSettings, grad_scaler, train_step  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from device_report import render  # noqa: E402

MODELS = {"G1-BN": ("efficientnet_b0", "bn"), "G16-GN": ("g16_efficientnet_b0", "gn"),
          "G16-LN+PN": ("g16_efficientnet_b0", "lnpn")}
# Tolerances against float64, for rounding, not for bugs (a wrong or missing gradient has a cosine near 0); fp32 on a
# GPU runs its convolutions in TF32 (10 mantissa bits, as fp16), so it is held to fp16's tensor tolerance.
LOSS_ERROR = {"fp32": 5e-3, "bf16": 5e-2, "fp16": 2e-2}  # the loss's relative error
COSINE = {"fp32": 0.999, "bf16": 0.9, "fp16": 0.99}  # the whole gradient's direction; 1 - cosine grows with the
# square of the rounding error, and bf16's unit roundoff is 8x fp16's: G16-LN+PN at batch 4 gave 1 - cosine = 0.0011 in
# fp16 and 0.070 in bf16 (64x) on a CPU
TENSOR_COSINE = {"fp32": 0.8, "bf16": 0.5, "fp16": 0.8}  # the worst parameter tensor's direction
SIGNAL = 1e-8  # tensors whose float64 gradient is below this fraction of the whole one's norm carry none (a BN bias
# whose shift the next BN removes has a gradient of exactly 0 up to rounding) and are not compared
SLOWER_DEFAULT = 1.05  # a default layout or form this much slower than the fastest fails `speed_train` on a GPU


class Skip(Exception):
    """A check that cannot run here (its reason is recorded)."""


@dataclass
class Ctx:
    """What every check gets."""

    device: torch.device
    quick: bool
    work: Path  # the temporary folder
    out: Path
    say: Callable[[str], None]
    measured: DevicePeaks | None = None

    @property
    def amp(self) -> str:
        """The precision of the speed checks: bf16 autocast on a GPU, fp32 on a CPU (where bf16 may be emulated)."""
        return "bf16" if self.device.type == "cuda" else "off"

    def peaks(self) -> DevicePeaks:
        """The device's compute peak in the speed checks' precision and its bandwidth, measured once."""
        if self.measured is None:
            dtype = torch.bfloat16 if self.amp == "bf16" else torch.float32
            self.measured = measure_device(self.device, dtype, repeats=1 if self.quick else 5)
        return self.measured


def model_of(label: str, norm: str | None = None, quick: bool = False) -> torch.nn.Module:
    """The seeded model (``norm`` instead of the label's); its classifier init scaled by 0.1 (timm's
    head_init_scale) keeps the 10 logits small, so that comparisons across precisions measure the network rather
    than the rounding of a few big logits. ``quick``: B0 at a quarter of its depth, one block of each of its 7
    stages (every kind of block but the residual ones, 7 instead of 16)."""
    name, own = MODELS[label]
    torch.manual_seed(0)
    cfg = preset(name, norm=norm or own, num_classes=10, drop_rate=0.0, drop_path_rate=0.0)
    model = build(dataclasses.replace(cfg, depth=0.25) if quick else cfg)
    with torch.no_grad():
        model.classifier.weight.mul_(0.1)
    return model


# --------------------------------------------------------------------------- correctness


class Recorder(torch.optim.SGD):
    """SGD that keeps the gradients its first step sees (the training step unscales them first and clears
    them after stepping)."""

    def __init__(self, params: list[torch.nn.Parameter], lr: float) -> None:
        super().__init__(params, lr=lr)
        self.grads: list[torch.Tensor] | None = None

    def step(self, closure: Callable | None = None) -> None:  # type: ignore[override]
        if self.grads is None:
            self.grads = [p.grad.detach().double().cpu().flatten() for p in self.param_groups[0]["params"]]
        super().step(closure)


def first_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, amp: str,
               lr: float) -> tuple[float, list[torch.Tensor], Recorder, torch.amp.GradScaler]:
    """The loss and gradients of the training step at the model's weights (fp16: steps whose scaled gradients
    overflowed are skipped by the scaler, as in training, until one is taken)."""
    device = next(model.parameters()).device
    optimizer, scaler = Recorder(list(model.parameters()), lr), grad_scaler(device, amp)
    settings = StepSettings(micro_batch_size=len(x), num_classes=10, amp=amp)
    for _ in range(8):
        loss = train_step(model, optimizer, scaler, x, y, settings).item()
        if optimizer.grads is not None:
            return loss, optimizer.grads, optimizer, scaler
    raise RuntimeError(f"{amp}: every scaled gradient overflowed")


def check_train_steps(c: Ctx) -> dict:
    """Loss and gradients of the first step against float64 on the CPU; later steps finite. ``--quick``: bf16 and
    fp16 for the flagship only (on CPUs without bf16 instructions both run at a few percent of fp32's speed), the
    models at a quarter of their depth (:func:`model_of`)."""
    res, batch = (32, 4) if c.quick else (128, 32)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 3, res, res, generator=gen), torch.randint(0, 10, (batch,), generator=gen)
    cases, status = {}, "pass"
    for label in MODELS:
        reference = model_of(label, quick=c.quick)
        names = [n for n, _ in reference.named_parameters()]
        ref_loss, ref_grads, _, _ = first_step(reference.double(), x.double(), y, "off", 0.0)
        ref = torch.cat(ref_grads)
        for form in ("plain", "fused") if MODELS[label][1] == "lnpn" else ("plain",):
            for amp in ("off",) if c.quick and (label, form) != ("G16-LN+PN", "plain") else ("off", "bf16", "fp16"):
                precision = "fp32" if amp == "off" else amp
                model = model_of(label, quick=c.quick).to(c.device).train()
                if form == "fused":
                    peffnet.fuse_proxy_norm(model)
                loss, grads, optimizer, scaler = first_step(model, x.to(c.device), y.to(c.device), amp, 1e-3)
                settings = StepSettings(micro_batch_size=batch, num_classes=10, amp=amp)
                later = [train_step(model, optimizer, scaler, x.to(c.device), y.to(c.device), settings).item()
                         for _ in range(1 if c.quick else 2)]
                per_tensor = {n: F.cosine_similarity(g, r, dim=0).item() for n, g, r in zip(names, grads, ref_grads,
                              strict=True) if r.norm() > SIGNAL * ref.norm()}
                worst = min(per_tensor, key=per_tensor.get)
                case = {"loss": loss, "reference_loss": ref_loss, "loss_rel_error": abs(loss / ref_loss - 1),
                        "grad_cosine": F.cosine_similarity(torch.cat(grads), ref, dim=0).item(),
                        "min_tensor_cosine": per_tensor[worst], "min_tensor": worst,
                        "tensors_without_signal": len(names) - len(per_tensor), "later_losses": later}
                case["ok"] = (case["loss_rel_error"] <= LOSS_ERROR[precision]
                              and case["grad_cosine"] >= COSINE[precision]
                              and case["min_tensor_cosine"] >= TENSOR_COSINE[precision]
                              and all(map(_finite, [loss, *later])))
                cases[f"{label} {form} {precision}"] = case
                status = status if case["ok"] else "fail"
        c.say(f"train_steps: {label} done")
    return {"status": status, "resolution": res, "batch": batch, "cases": cases,
            "tolerance": {"loss_rel_error": LOSS_ERROR, "grad_cosine": COSINE, "min_tensor_cosine": TENSOR_COSINE}}


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")


def randomized(model: torch.nn.Module, scale: float = 0.3) -> torch.nn.Module:
    """Every 1-D parameter (norm and proxy-norm affine, biases) moved off its initial value, so that every term
    of Eq. 4 matters in the folding."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(scale * torch.randn(p.shape, generator=gen).to(p))
    return model


def check_fold(c: Ctx) -> dict:
    """Folded proxy norm equals the plain model on the device: float64 (the test), fp32 (recorded: with TF32
    convolutions two fp32 models with different weights differ by ~1e-3)."""
    res = 32 if c.quick else 224
    record, status = {"resolution": res}, "pass"
    for norm in ("lnpn", "gnpn"):
        for dtype in (torch.float64, torch.float32):
            model = randomized(model_of("G16-LN+PN", norm=norm)).to(c.device, dtype).eval()
            x = torch.randn(4, 3, res, res, generator=torch.Generator().manual_seed(2)).to(c.device, dtype)
            with torch.no_grad():
                plain = model(x)
                folded = peffnet.fold_proxy_norm(copy.deepcopy(model))(x)
            rel = ((folded - plain).abs().max() / plain.abs().max()).item()
            record[f"{norm} {str(dtype).removeprefix('torch.')} max_rel_diff"] = rel
            if dtype == torch.float64 and rel > 1e-9:
                status = "fail"
    return {"status": status, **record, "tolerance": "float64: 1e-9 of the largest logit"}


def tiny_train(out: Path, device: str, epochs: int) -> list[str]:
    return ["train", "--model", "g16_efficientnet_b0", "--norm", "lnpn", "--data", "synthetic", "--subset", "64",
            "--val-subset", "32", "--batch-size", "16", "--resolution", "32", "--epochs", str(epochs), "--no-progress",
            "--drop-rate", "0", "--drop-path-rate", "0", "--mixup-alpha", "0", "--lr", "0.003", "--recipe-epochs",
            "0", "--head-init-scale", "0", "--device", device, "--out", str(out)]


def check_checkpoint_to_cpu(c: Ctx) -> dict:
    """A run trained for an epoch on the device continues on the CPU (the same command, a longer --epochs)."""
    from peffnet.checkpoint import load_checkpoint
    from peffnet.cli import main

    run = c.work / "run"
    if main(tiny_train(run, c.device.type, 1)) != 0:
        raise RuntimeError(f"training on {c.device} failed")
    written = load_checkpoint(run / "checkpoint.pt")["step"]
    if main(tiny_train(run, "cpu", 2)) != 0:
        raise RuntimeError("continuing on the CPU failed")
    summary = json.loads((run / "summary.json").read_text())
    final = load_checkpoint(run / "checkpoint.pt")
    finite = all(torch.isfinite(t).all() for t in final["model"].values() if t.is_floating_point())
    return {"status": "pass" if finite and final["step"] == 2 * written else "fail", "written_on": str(c.device),
            "step_written": written, "final_step": final["step"], "top1": summary["top1"],
            "device_of_finish": summary["device"]}


def check_export(c: Ctx) -> dict:
    """The run's checkpoint exports to ONNX (proxy norm folded), verified against PyTorch by onnxruntime."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise Skip(f"onnxruntime is not installed ({err})") from None
    from peffnet.serving.export import export_checkpoint

    if not (c.work / "run" / "checkpoint.pt").exists():
        raise Skip("no checkpoint: checkpoint_to_cpu did not run")
    result = export_checkpoint(c.work / "run", "onnx", out=c.work / "model.onnx")
    return {"status": "pass", "onnx_max_abs_diff": result.max_abs_diff}


def check_sync_free(c: Ctx) -> dict:
    """Training steps as ``peffnet train`` takes them (:func:`peffnet.training.loop.advance`: in-memory data
    batched on the device, Mixup, CutMix, label smoothing, the loss read by :class:`LossReader`), counted for
    host synchronisations: none in fp32 and bf16; fp16's loss scaler reads its overflow flag once a step."""
    from peffnet.training import distributed
    from peffnet.training.config import TrainConfig
    from peffnet.training.loop import LossReader, advance, train_mode
    from peffnet.training.train import train_job

    counts, cuda = {}, c.device.type == "cuda"
    for amp in ("off", "bf16", "fp16") if cuda else ("off",):
        cfg = TrainConfig(model="g16_efficientnet_b0", norm="lnpn", data="synthetic", resolution="32" if c.quick
                          else "64", batch_size=16 if c.quick else 64, epochs=1, amp=amp, mixup_alpha=0.2,
                          cutmix_lambda=0.8, label_smoothing=0.1, device=c.device.type, out=str(c.work / "sync"),
                          progress=False)
        job = train_job(cfg, distributed.Context(0, 1, 0, c.device))
        train_mode(job.net)
        reader, batches, steps = LossReader(), iter(job.train_loader), 2 if c.quick else 5
        for _ in range(2):  # warm-up: lazy initialisation, cuDNN's autotuning
            reader.put(job.state.step, 1, 0.0, advance(job, *next(batches)))
        reader.take(wait=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if cuda:
                torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(steps):
                    reader.put(job.state.step, 1, 0.0, advance(job, *next(batches)))
                    reader.take()
            finally:
                if cuda:
                    torch.cuda.set_sync_debug_mode(0)
        syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
        counts[amp] = {"steps": steps, "syncs": len(syncs), "first": syncs[:1]}
        reader.take(wait=True)
    if not cuda:
        raise Skip(f"synchronisations are counted on CUDA only (the steps ran: {counts})")
    ok = counts["off"]["syncs"] == counts["bf16"]["syncs"] == 0 and counts["fp16"]["syncs"] <= counts["fp16"]["steps"]
    return {"status": "pass" if ok else "fail", "counts": counts}


# --------------------------------------------------------------------------- speed


def speed_specs(c: Ctx) -> list[BenchSpec]:
    """timm's B0 and ours in both layouts (LN+PN also in its other form), and ours at half resolution in the
    layout they train in by default here."""
    native = 64 if c.quick else 224
    half = 32 if c.quick else half_resolution(native)
    specs = []
    for label, (name, norm) in {"timm B0": ("timm:efficientnet_b0", None), **MODELS}.items():
        overrides = {"norm": norm} if norm else {}
        for cl in (True, False):
            specs.append(BenchSpec(name, overrides, native, channels_last=cl, label=f"{label} {_layout(cl)}"))
        if norm == "lnpn":
            other = "plain" if training_form(model_of(label), c.device, False) == "fused" else "fused"
            specs.append(BenchSpec(name, overrides, native, channels_last=prefers_channels_last(norm, c.device),
                                   form=other, label=f"{label} {other}"))
    for label, (name, norm) in MODELS.items():
        specs.append(BenchSpec(name, {"norm": norm}, half, channels_last=prefers_channels_last(norm, c.device),
                               label=f"{label} half"))
    return specs


def _layout(channels_last: bool) -> str:
    return "channels_last" if channels_last else "NCHW"


def bench_options(c: Ctx, *modes: str) -> BenchOptions:
    batch = 2 if c.quick else (128 if "train" in modes else 256)
    return BenchOptions(batch_size=batch, device=str(c.device), amp=c.amp != "off", warmup=1 if c.quick else 3,
                        repeats=1 if c.quick else 5, iters=1 if c.quick else 3, latency_iters=1 if c.quick else 10,
                        **dict.fromkeys(modes, True))


def check_loader(c: Ctx) -> dict:
    """Loader vs model img/s at 128 and 224 px, both decoders (``--quick``: 64 px, 32 images, fp32). Whether the
    loader keeps up is a finding, not a failure; a decoder that gives no images or a model that does not train
    fails."""
    if c.quick:
        record = device_loader_check(str(c.device), resolutions=(64,), images=32, batch_size=16, amp=False,
                                     repeats=1, work=c.work, peaks=c.peaks())
    else:
        record = device_loader_check(str(c.device), amp=True, work=c.work, peaks=c.peaks())
    for r in record["results"]:
        c.say(f"loader: {r['resolution']} px, decode {r['decode']}: {r['loader_img_per_s_per_worker']:.0f} img/s "
              f"per worker, model {r['model_img_per_s']:.0f} img/s: {r['verdict']}")
    ok = all(r["loader_img_per_s_per_worker"] > 0 and r["model_img_per_s"] > 0 for r in record["results"])
    return {"status": "pass" if ok and record["results"] else "fail", **record}


def check_speed_train(c: Ctx) -> dict:
    """Training img/s of every spec in one alternating run; the defaults' verdict."""
    result = run_bench(speed_specs(c), bench_options(c, "train"), c.peaks(), progress=True)
    return {**verdict(result, c, "train"), **result}


def check_speed_infer(c: Ctx) -> dict:
    """Inference img/s and batch-1 latency (eval mode set once), LN+PN folded as it is served."""
    specs = [s for s in speed_specs(c) if s.form is None]
    for s in specs:
        s.fold_pn = s.overrides.get("norm") == "lnpn"
    result = run_bench(specs, bench_options(c, "infer", "latency"), c.peaks(), progress=True)
    return {**verdict(result, c, "infer"), **result}


def verdict(result: dict, c: Ctx, mode: str) -> dict:
    """Fail when a figure beats the measured peak of its precision, or (training, on a GPU) when the layout or
    form ``peffnet train`` picks by default is over :data:`SLOWER_DEFAULT` times slower than the fastest."""
    rows = [r for r in result["results"] if mode in r]
    above = [r["label"] for r in rows if r[mode]["mac_utilization"] > 1.0]
    defaults = {}
    if mode == "train":
        for label, (_, norm) in MODELS.items():
            mine = {r["label"]: r[mode]["img_per_s"] for r in rows
                    if r["label"].startswith(label + " ") and not r["label"].endswith("half")}
            pick = f"{label} {_layout(prefers_channels_last(norm, c.device))}"
            form = training_form(model_of(label), c.device, False)
            fastest = max(mine, key=mine.get)
            defaults[label] = {"default": f"{pick} ({form} form)", "fastest": fastest,
                               "default_slower_by": mine[fastest] / mine[pick]}
    slow = [k for k, v in defaults.items() if v["default_slower_by"] > SLOWER_DEFAULT]
    failed = above or (slow and c.device.type == "cuda" and not c.quick)
    return {"status": "fail" if failed else "pass", "above_peak": above, "defaults": defaults,
            "defaults_not_fastest": slow}


def check_compile(c: Ctx) -> dict:
    """A compiled training step of the plain G16-LN+PN model, captured as one graph (``fullgraph``: a graph break
    fails the check), equals the eager one at the same weights; then both
    train in alternation, the compiled one reusing its graphs (``--quick``: the ``eager`` backend, graph capture
    only, since generating and compiling kernels takes minutes on a CPU; the model at a quarter of its depth,
    since capturing the proxy norms' moments takes about 0.4 s a layer there)."""
    res, batch = (32, 4) if c.quick else (224, 128)
    backend = "eager" if c.quick else "inductor"
    fmt = torch.channels_last if prefers_channels_last("lnpn", c.device) else torch.contiguous_format
    x = torch.randn(batch, 3, res, res, device=c.device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=c.device)
    eager = model_of("G16-LN+PN", quick=c.quick).to(c.device, memory_format=fmt).train()
    compiled = copy.deepcopy(eager)
    nets = {"eager": eager, "compiled": torch.compile(compiled, backend=backend, fullgraph=True)}  # a break fails
    losses, firsts = {}, {}
    for mode, net in nets.items():
        start = time.perf_counter()
        with torch.autocast(c.device.type, dtype=torch.bfloat16, enabled=c.amp == "bf16"):
            loss = F.cross_entropy(net(x).float(), y)
        loss.backward()  # compiles the backward graph too
        losses[mode], firsts[mode] = loss.item(), time.perf_counter() - start
        c.say(f"compile: first {mode} step {firsts[mode]:.1f} s")
    rel = abs(losses["compiled"] / losses["eager"] - 1)
    record = {"backend": backend, "resolution": res, "batch": batch, "amp": c.amp, "loss_rel_diff": rel,
              "first_step_s": firsts}
    settings = StepSettings(micro_batch_size=batch, num_classes=10, amp=c.amp)
    steps = []
    for model, net in ((eager, nets["eager"]), (compiled, nets["compiled"])):
        optimizer, scaler = rmsprop_tf(model, lr=1e-5, decay=0.9), grad_scaler(c.device, c.amp)
        steps.append(lambda net=net, optimizer=optimizer, scaler=scaler: train_step(net, optimizer, scaler, x, y,
                                                                                     settings))
    seconds = alternate(steps, warmup=1, repeats=1 if c.quick else 5, iters=1 if c.quick else 3, device=c.device)
    eager_s, compiled_s = (statistics.median(t) for t in seconds)
    record.update(train_img_per_s={"eager": batch / eager_s, "compiled": batch / compiled_s},
                  compiled_speedup=eager_s / compiled_s)
    return {"status": "pass" if rel <= (2e-2 if c.amp == "bf16" else 1e-3) else "fail", **record}


def check_suite(c: Ctx) -> dict:
    """``benchmarks/run_suite.py``'s comparisons at GPU sizes, written beside device_check.json."""
    suite = REPO / "benchmarks" / "run_suite.py"
    if not suite.is_file():
        raise Skip("not run from the repository (benchmarks/run_suite.py is missing)")
    sys.path.insert(0, str(suite.parent))
    import run_suite

    argv = ["--device", c.device.type, "--only", "peers", "group_size", "norms", "resolution", "channels_last",
            "--results", str(c.out), "--markdown", str(c.out / "suite.md"), "--quick" if c.quick else "--check"]
    if run_suite.main(argv) != 0:
        raise RuntimeError("run_suite.py failed")
    return {"status": "pass", "command": "python benchmarks/run_suite.py " + " ".join(argv)}


def check_ddp(c: Ctx) -> dict:
    """One DDP step in a one-process group (NCCL on CUDA, gloo on a CPU; 60 s timeout), two micro-batches (the
    first under ``no_sync``), equal to the step without DDP."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cuda = c.device.type == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                            timeout=timedelta(seconds=60), device_id=c.device if cuda else None)
    try:
        model = model_of("G16-GN").to(c.device)
        reference = copy.deepcopy(model)
        net = DistributedDataParallel(model, device_ids=[c.device] if cuda else None)
        x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
        settings = StepSettings(micro_batch_size=4, num_classes=10)
        losses = [train_step(m, torch.optim.SGD(m.parameters(), lr=0.0), grad_scaler(c.device, "off"), x, y,
                             settings).item() for m in (net, reference)]
    finally:
        dist.destroy_process_group()
    return {"status": "pass" if abs(losses[0] - losses[1]) <= 1e-4 * abs(losses[1]) else "fail",
            "backend": dist.Backend.NCCL if cuda else dist.Backend.GLOO, "loss": losses[0],
            "loss_without_ddp": losses[1]}


CHECKS: list[tuple[str, Callable[[Ctx], dict], float, float]] = [  # name, check, budget on an H100, with --quick
    ("train_steps", check_train_steps, 40, 30),
    ("fold", check_fold, 15, 5),
    ("sync_free", check_sync_free, 30, 10),
    ("checkpoint_to_cpu", check_checkpoint_to_cpu, 30, 20),
    ("export", check_export, 20, 20),
    ("loader", check_loader, 60, 30),
    ("speed_train", check_speed_train, 75, 15),
    ("speed_infer", check_speed_infer, 45, 10),
    ("compile", check_compile, 150, 20),
    ("suite", check_suite, 120, 60),
    ("ddp", check_ddp, 20, 5),
]


# --------------------------------------------------------------------------- driver


class Tee:
    """A stream that also appends to the log file, line-buffered (the log survives a kill)."""

    def __init__(self, stream: object, log: object) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.log.write(text)
        self.log.flush()
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> object:
        return getattr(self.stream, name)


def environment(device: torch.device) -> dict:
    import timm
    import torchvision

    env = {"torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__,
           "peffnet": peffnet.__version__, "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(),
                   tf32={"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32})
    return env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for device_check.json, RESULTS.md and the log")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (a dry run)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one round: all checks in 2 minutes on a CPU")
    p.add_argument("--budget", type=float, default=420, help="seconds for all checks (default 420: 7 minutes)")
    p.add_argument("--suite", action="store_true", help="also run benchmarks/run_suite.py's comparisons")
    p.add_argument("--only", nargs="+", choices=[n for n, *_ in CHECKS], help="run these checks only")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("device_check.py: error: no CUDA device here; use --device cpu --quick for a dry run", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    log = open(args.out / "device_check.log", "a")  # noqa: SIM115 - open for the whole run
    sys.stdout, sys.stderr = Tee(sys.stdout, log), Tee(sys.stderr, log)
    start = time.perf_counter()

    def say(text: str) -> None:
        print(f"[{time.perf_counter() - start:5.0f} s] {text}", file=sys.stderr, flush=True)

    record = {"command": " ".join(["scripts/device_check.py", *(argv if argv is not None else sys.argv[1:])]),
              "env": environment(device), "quick": args.quick, "budget_s": args.budget, "checks": {}}

    def save() -> None:
        record["wall_time_s"] = time.perf_counter() - start
        for name, text in (("device_check.json", json.dumps(record, indent=1) + "\n"), ("RESULTS.md", render(record))):
            tmp = args.out / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(args.out / name)

    work = Path(tempfile.mkdtemp(prefix="peffnet-device-check-"))
    ctx = Ctx(device, args.quick, work, args.out, say)
    current: dict = {}

    def abort(why: str, code: int) -> None:
        """Record the check in progress as failed, save, remove the temporary folder and end the process."""
        if current:
            record["checks"][current["name"]] = {"status": "fail", "error": why,
                                                 "seconds": time.perf_counter() - current["t0"]}
        save()
        say(f"{current.get('name', 'device_check')}: {why}; results so far in {args.out / 'device_check.json'}")
        shutil.rmtree(work, ignore_errors=True)
        os._exit(code)

    main_pid = os.getpid()

    def on_sigterm(*_: object) -> None:
        """This process: record, save, clean up and end; a forked child (a pool or DataLoader worker told to
        stop) just ends, leaving the record and the temporary folder to this process."""
        if os.getpid() != main_pid:
            os._exit(143)
        abort("killed by SIGTERM (the time limit?)", 143)

    signal.signal(signal.SIGTERM, on_sigterm)
    selected = [c for c in CHECKS if (args.only is None or c[0] in args.only) and (c[0] != "suite" or args.suite)]
    try:
        for name, fn, budget_gpu, budget_quick in selected:
            budget, t0 = (budget_quick if args.quick else budget_gpu), time.perf_counter()
            left = args.budget - (t0 - start)
            if budget > left:
                result = {"status": "skip", "reason": f"its budget ({budget:.0f} s) is over the time left "
                                                      f"({left:.0f} s)"}
            else:
                say(f"{name}: starting (budget {budget:.0f} s)")
                current.update(name=name, t0=t0)
                watchdog = threading.Timer(2 * budget + 30, abort, (f"timed out after {2 * budget + 30:.0f} s", 3))
                watchdog.daemon = True
                watchdog.start()
                try:
                    result = fn(ctx)
                except Skip as why:
                    result = {"status": "skip", "reason": str(why)}
                except Exception as err:  # a failed check is a result; the next checks still run
                    last = (str(err).strip().splitlines() or [""])[-1]
                    result = {"status": "fail", "error": f"{type(err).__name__}: {last}",
                              "traceback": traceback.format_exc()[-3000:]}
                finally:
                    watchdog.cancel()
                    current.clear()
            result["seconds"] = time.perf_counter() - t0
            record["checks"][name] = result
            save()
            say(f"{name}: {result['status']} ({result['seconds']:.0f} s)"
                + (f": {result.get('reason') or result.get('error')}" if result["status"] != "pass" else ""))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    failed = [n for n, r in record["checks"].items() if r["status"] == "fail"]
    say(f"{len(record['checks']) - len(failed)}/{len(record['checks'])} not failed -> {args.out / 'device_check.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
