"""Practical efficiency of models, measured side by side (paper Sections 2.2, 4.4 and 4.5).

For each model: training img/s (forward + backward + optimizer step), inference img/s, batch-1 latency
(median and p90), peak memory, MACs and the achieved fraction of the device's measured matmul peak.

Fairness rules: every model is warmed up, then the models are timed in *alternation* (the starting
model rotates each repeat) in one process, and each figure is the median over repeats; ratios are
medians of per-repeat ratios against the first model, so load that drifts over the run cancels out.

Peak memory is the bytes of the model's own resident tensors (parameters, buffers, optimizer state,
input batch) plus the largest transient allocation during one step (:mod:`peffnet.measure`).

Model names: a peffnet preset (``g16_efficientnet_b0``), ``timm:NAME`` or ``torchvision:NAME``
(always randomly initialised: nothing is downloaded). ``NAME@R`` sets that model's resolution.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from peffnet.errors import ConfigError
from peffnet.fusion import fuse_proxy_norm, training_form
from peffnet.measure.device import PEAK_REPEATS, DevicePeaks, environment, measure_device, resolve_device
from peffnet.measure.subjects import BenchSpec, build_model
from peffnet.measure.timing import GIB, alternate, max_batch, memory_cap, nbytes
from peffnet.models.profile import model_macs
from peffnet.runtime.device import peak_transient_bytes, synchronize
from peffnet.runtime.optim import rmsprop_tf
from peffnet.runtime.step import StepSettings, grad_scaler, train_step
from peffnet.settings import BATCH, BOOL, FLOAT, INT, NON_NEGATIVE, POSITIVE, Settings, setting

MODES = ("train", "infer", "latency")
PROBE_BATCHES = (1, 4)  # CPU: peak memory is measured at these and extrapolated linearly


@dataclass
class BenchOptions(Settings):
    """What to measure and how, shared by all models of one run (``peffnet bench``'s options; ``peffnet report
    --measure`` and ``benchmarks/run_suite.py`` use them too). With none of ``train``/``infer``/``latency``
    set, all three are measured."""

    train: bool = setting(False, "training img/s (the training step: forward, backward, the recipe's RMSProp)",
                          BOOL, group="what")
    infer: bool = setting(False, "inference img/s", BOOL, group="what")
    latency: bool = setting(False, "batch-1 latency, median and p90", BOOL, group="what")
    batch_size: int | str = setting(32, "batch for training/inference, or 'max': the largest that fits (CUDA: tried; "
                                        "CPU: predicted against memory_cap)", BATCH, group="how")
    device: str | None = setting(None, "cpu, cuda or cuda:N (default: cuda when available, else cpu)", group="how")
    amp: bool = setting(False, "autocast, bfloat16 (float16 with --amp-dtype float16: with a grad scaler, as "
                               "training in fp16)", BOOL, group="how")
    amp_dtype: str = setting("bfloat16", "the autocast dtype", choices=("float16", "bfloat16"), group="how")
    warmup: int = setting(2, "untimed steps per model before timing", INT, NON_NEGATIVE, group="how")
    repeats: int = setting(5, "timed rounds over all models", INT, POSITIVE, group="how")
    iters: int = setting(2, "steps per model per round", INT, POSITIVE, group="how")
    latency_iters: int = setting(10, "batch-1 calls per model per round", INT, POSITIVE, group="how")
    memory_cap: float | None = setting(None, "CPU memory budget in GiB for batch 'max' and batch checks (default "
                                             "min(4, 25%% of RAM))", FLOAT, POSITIVE, group="how")
    max_batch_limit: int = setting(4096, "largest batch 'max' tries", INT, POSITIVE, flag=False)
    num_classes: int = setting(1000, "classifier width of every model", INT, POSITIVE, group="how")

    @property
    def modes(self) -> tuple[str, ...]:
        """The measurements asked for, in :data:`MODES` order (all of them when none was)."""
        return tuple(m for m in MODES if getattr(self, m)) or MODES

    def only(self, *modes: str) -> BenchOptions:
        """A copy of these options that measures just ``modes``."""
        return dataclasses.replace(self, **{m: m in modes for m in MODES})


class Subject:
    """One model prepared on the device: eager module, the callable to time (maybe compiled), optimizer."""

    def __init__(self, spec: BenchSpec, opts: BenchOptions, device: torch.device) -> None:
        self.spec = spec
        self.device = device
        model, native, desc = build_model(spec, opts.num_classes)
        self.resolution = spec.resolution or native
        self.label = spec.label or (spec.name + (f"@{spec.resolution}" if spec.resolution else "")
                                    + (" folded" if spec.fold_pn else ""))
        self.desc = desc
        self.num_classes = opts.num_classes
        self.in_chans = int(getattr(getattr(model, "cfg", None), "in_chans", 3))
        self.params = sum(p.numel() for p in model.parameters())
        self.macs = model_macs(model, self.resolution)
        self.memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=self.memory_format)
        form = spec.form or ("plain" if spec.fold_pn else training_form(self.model, device, spec.compile))
        if form == "fused":  # by default the form `peffnet train` trains in here
            fuse_proxy_norm(self.model)
            self.desc += " fused"
        self.fn: nn.Module = torch.compile(self.model, dynamic=False) if spec.compile else self.model  # type: ignore[assignment]
        self.optimizer = rmsprop_tf(self.model, lr=1e-5, decay=0.9)
        self.amp = amp_setting(opts)
        self.scaler = grad_scaler(device, self.amp)

    def make_step(self, mode: str, batch: int, fn: nn.Module | None = None) -> tuple[Callable[[], None], int]:
        """A closure running one ``mode`` step at ``batch``, and the bytes of resident tensors it uses. The model
        is put in the mode's train/eval state here, once: a step does not change it (a proxy-norm model's
        eval-mode moments would otherwise be recomputed every step)."""
        fn = fn or self.fn
        r = self.resolution
        x = torch.randn(batch, self.in_chans, r, r, device=self.device).contiguous(memory_format=self.memory_format)
        resident = nbytes(self.model.parameters()) + nbytes(self.model.buffers()) + nbytes([x])
        self.model.train(mode == "train")
        if mode == "train":
            y = torch.randint(0, self.num_classes, (batch,), device=self.device)
            resident += nbytes(v for s in self.optimizer.state.values() for v in s.values())
            settings = StepSettings(micro_batch_size=batch, num_classes=self.num_classes, amp=self.amp,
                                    channels_last=self.spec.channels_last)

            def step() -> None:
                train_step(fn, self.optimizer, self.scaler, x, y, settings)
        else:
            cast = torch.autocast(self.device.type, dtype=AMP_DTYPES.get(self.amp, torch.float32),
                                  enabled=self.amp != "off")

            def step() -> None:
                with torch.inference_mode(), cast:
                    fn(x)

        return step, resident

    def peak_memory(self, mode: str, batch: int, fn: nn.Module | None = None) -> int:
        """Resident bytes plus the largest transient allocation of one ``mode`` step at ``batch``."""
        step, resident = self.make_step(mode, batch, fn)
        if mode == "train" and not self.optimizer.state:
            step()  # create the optimizer state first: it is resident, not transient
            step, resident = self.make_step(mode, batch, fn)
        self.optimizer.zero_grad(set_to_none=True)
        return resident + peak_transient_bytes(step, self.device)

    def memory_model(self, mode: str) -> Callable[[int], float]:
        """CPU: predicted peak bytes of a ``mode`` step at batch b, linear through two measured batches."""
        p1, p2 = (self.peak_memory(mode, b, self.model) for b in PROBE_BATCHES)
        slope = max((p2 - p1) / (PROBE_BATCHES[1] - PROBE_BATCHES[0]), 1.0)
        return lambda b: p1 + (b - PROBE_BATCHES[0]) * slope

    def fits(self, mode: str, opts: BenchOptions) -> Callable[[int], bool]:
        """Predicate "a ``mode`` step at batch b fits in memory" for :func:`max_batch`.

        CUDA: run the (eager) step and catch out-of-memory. CPU: :meth:`memory_model` against the cap.
        """
        if self.device.type == "cpu":
            predicted, cap = self.memory_model(mode), memory_cap(opts.memory_cap)
            return lambda b: predicted(b) <= cap

        def fits_cuda(b: int) -> bool:
            try:
                step, _ = self.make_step(mode, b, self.model)
                step()
                synchronize(self.device)
                return True
            except torch.OutOfMemoryError:
                return False
            finally:
                self.optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()

        return fits_cuda


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def amp_setting(opts: BenchOptions) -> str:
    """The training step's precision (``off``, ``bf16``, ``fp16``) of these options."""
    return ("bf16" if opts.amp_dtype == "bfloat16" else "fp16") if opts.amp else "off"


def _batch_for(subject: Subject, mode: str, opts: BenchOptions) -> int:
    """The batch to time ``mode`` at: the requested one (checked against memory) or the searched max."""
    if mode == "latency":
        return 1
    what = "training" if mode == "train" else "inference"
    if opts.batch_size == "max":
        try:
            return max_batch(subject.fits(mode, opts), opts.max_batch_limit)
        except ConfigError:
            raise ConfigError(f"{subject.label}: even batch size 1 does not fit in memory for {what}") from None
    batch = opts.batch_size
    if subject.device.type == "cpu" and isinstance(batch, int) and batch > PROBE_BATCHES[1]:
        need, cap = subject.memory_model(mode)(batch), memory_cap(opts.memory_cap)
        if need > cap:
            raise ConfigError(f"batch size {batch} does not fit for {subject.label} ({what}): needs about "
                              f"{need / GIB:.1f} GiB, the CPU memory cap is {cap / GIB:.1f} GiB "
                              "(--memory-cap, or --batch-size max)")
    return batch  # type: ignore[return-value]


def run_bench(specs: list[BenchSpec], opts: BenchOptions, peaks: DevicePeaks | None = None,
              progress: bool | None = None) -> dict:
    """Measure every spec for every mode in ``opts.modes``; returns the JSON-ready result. ``progress``: show the
    timing's progress (``None``: on a terminal only)."""
    if not specs:
        raise ConfigError("no models to benchmark")
    if "train" in opts.modes and any(s.fold_pn for s in specs):
        raise ConfigError("folded proxy norm is for inference only; measure training without --fold-pn")
    device = resolve_device(opts.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if amp_setting(opts) == "fp16" and device.type != "cuda":
        raise ConfigError("--amp-dtype float16 needs a CUDA device; use bfloat16 on the CPU")
    dtype = AMP_DTYPES.get(amp_setting(opts), torch.float32)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    subjects = [Subject(s, opts, device) for s in specs]
    batches_of = {mode: [_batch_for(s, mode, opts) for s in subjects] for mode in opts.modes}  # bad sizes fail fast
    measured_here = peaks is None
    peak_repeats = min(PEAK_REPEATS, opts.repeats)  # a quick look (--repeats 1) times its ceilings as often
    peaks = peaks or measure_device(device, dtype, peak_repeats)
    results = [{"name": s.spec.name, "label": s.label, "desc": s.desc, "resolution": s.resolution,
                "params": s.params, "macs": s.macs, "channels_last": s.spec.channels_last,
                "compile": s.spec.compile} for s in subjects]
    for mode in opts.modes:
        batches = batches_of[mode]
        steps = []
        for s, b in zip(subjects, batches, strict=True):
            steps.append(s.make_step(mode, b)[0])
        try:
            if mode == "latency":
                samples = alternate(steps, opts.warmup, opts.repeats * opts.latency_iters, 1, device, "latency",
                                    progress=progress)
            else:
                samples = alternate(steps, opts.warmup, opts.repeats, opts.iters, device, mode, progress=progress)
        except torch.OutOfMemoryError:
            raise ConfigError(f"batch size {opts.batch_size} does not fit in {device} memory ({mode}); "
                              "use a smaller --batch-size or --batch-size max") from None
        for i, (s, b, secs) in enumerate(zip(subjects, batches, samples, strict=True)):
            # Throughput ratio per round (batches may differ under --batch-size max): median and quartiles.
            ratios = [(b / t) / (batches[0] / ref) for ref, t in zip(samples[0], secs, strict=True)]
            quartiles = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
            entry: dict[str, object] = {"batch_size": b, "ratio": statistics.median(ratios),
                                        "ratio_iqr": [quartiles[0], quartiles[2]]}
            if mode == "latency":
                ms = [1000 * t for t in secs]
                p90 = statistics.quantiles(ms, n=10, method="inclusive")[8] if len(ms) > 1 else ms[0]
                entry.update(median_ms=statistics.median(ms), p90_ms=p90, samples=len(ms))
            else:
                img_s = b / statistics.median(secs)
                passes = 3 if mode == "train" else 1  # backward costs about twice the forward
                entry.update(img_per_s=img_s, peak_memory_bytes=s.peak_memory(mode, b),
                             achieved_macs_per_s=passes * s.macs * img_s)
            results[i][mode] = entry
    if measured_here:  # the machine may have been busier at the start: keep the best of both measurements
        peaks = peaks.max_with(measure_device(device, dtype, peak_repeats))
    set_utilization(results, peaks)
    options = {**opts.to_dict(), "modes": list(opts.modes)}
    return {"env": environment(device), "peaks": peaks.to_dict(), "options": options, "results": results}


def set_utilization(results: list[dict], peaks: DevicePeaks) -> None:
    """``mac_utilization`` = achieved MAC/s (x3 in training: backward ~ 2x forward) / measured matmul peak."""
    for r in results:
        for mode in ("train", "infer"):
            if mode in r:
                r[mode]["mac_utilization"] = r[mode]["achieved_macs_per_s"] / peaks.macs_per_s
