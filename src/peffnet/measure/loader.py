"""Does the input pipeline keep up with the model? ``peffnet data bench`` and :func:`device_loader_check`.

For a dataset spec (image folder or shards) at each resolution, on a device:

* **loader img/s per worker**: the work one DataLoader worker does for the training pipeline (read, header,
  plan, decode, resize, batch), in images per CPU second of this process (its CPU time, so that other
  processes on the machine do not count), median over rounds -- one worker process delivers about that;
* **finish img/s**: the work left for the training process on the device (copy, decode there with
  ``decode="device"``, scale and normalize): on a CPU it takes the training process's time;
* **model img/s**: training steps of the model at that resolution (:func:`peffnet.measure.bench.run_bench`);
* **workers needed**: model img/s / loader img/s per worker, and whether the cores here have them (one core is
  left to the training process): "N workers keep up" or "cannot keep up with C cores".

With ``decode="device"`` the workers only read and plan, and the device decodes (nvJPEG on a GPU).
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from peffnet.data import build_dataset
from peffnet.data.images import ImageDataset, finish
from peffnet.data.photos import write_photo_folder
from peffnet.errors import ConfigError
from peffnet.measure.bench import BenchOptions, run_bench
from peffnet.measure.device import DevicePeaks, environment, resolve_device
from peffnet.measure.subjects import BenchSpec
from peffnet.measure.timing import synchronize
from peffnet.resolution import RESOLUTION
from peffnet.settings import BOOL, INT, INTS, POSITIVE, Settings, setting

DEFAULT_RESOLUTIONS = (128, 224)
"""B0's half-resolution training size by the issue's measurement (128) and its native size (224)."""


@dataclass
class DataBenchOptions(Settings):
    """What ``peffnet data bench`` measures, and how."""

    data: str = setting("", "dataset spec: imagefolder:PATH or shards:DIR", positional=True, required=True)
    resolutions: list[int] | None = setting(None, "training resolutions, comma-separated (default: 128,224)", INTS,
                                            RESOLUTION)
    device: str | None = setting(None, "cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    decode: str = setting("cpu", "where JPEGs are decoded: cpu (the workers), device (nvJPEG on a GPU; the same "
                                 "code with libjpeg-turbo on a CPU) or both", choices=("cpu", "device", "both"))
    model: str = setting("g16_efficientnet_b0", "model whose training speed the loader must match")
    norm: str = setting("lnpn", "its normalization")
    batch_size: int = setting(64, "training batch of the model's measurement, and images per loader round", INT,
                              POSITIVE)
    repeats: int = setting(5, "rounds of each measurement (medians)", INT, POSITIVE)
    amp: bool = setting(False, "train the model under bfloat16 autocast", BOOL)
    channels_last: bool = setting(True, "NHWC model and input (faster on CPUs and GPUs)", BOOL)


def cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def loader_rates(dataset: ImageDataset, decode: str, device: torch.device, batch: int, repeats: int
                 ) -> dict[str, float]:
    """Images per CPU second of a worker's work, and images per second of the finishing work on ``device``,
    for training batches of ``batch`` (a new epoch every round), medians over ``repeats`` rounds after one."""
    dataset.decode = decode
    finished = dataset.preprocessing if device.type != "cuda" else None  # a CPU's workers finish, as the loader's
    worker, finishing = [], []
    n = min(batch, len(dataset))
    for r in range(repeats + 1):
        picks = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(r))[:n]
        keys = [(i, r, 0) for i in picks.tolist()]
        start = time.process_time()
        samples = dataset.batch(keys, finished)
        worker_s = time.process_time() - start
        synchronize(device)
        clock = time.perf_counter if device.type == "cuda" else time.process_time
        start = clock()
        finish(samples, device, dataset.preprocessing)
        synchronize(device)
        if r:  # the first round warms caches (and the GPU decoder) up
            worker.append(n / worker_s)
            finishing.append(n / max(clock() - start, 1e-9))
    return {"loader_img_per_s_per_worker": statistics.median(worker), "finish_img_per_s": statistics.median(finishing)}


def verdict(model_img_per_s: float, per_worker: float, finish_img_per_s: float, device: torch.device) -> dict:
    """How many workers the model needs, and whether this machine has them (a core left for training)."""
    needed = model_img_per_s / per_worker
    spare = max(1, cores() - 1)
    keeps_up = math.ceil(needed) <= spare and finish_img_per_s > model_img_per_s
    if keeps_up:
        text = f"{math.ceil(needed)} worker(s) keep up"
    elif finish_img_per_s <= model_img_per_s:
        text = f"cannot keep up: finishing on the {device.type} alone gives {finish_img_per_s:.0f} img/s"
    else:
        text = f"cannot keep up with {cores()} cores (needs {needed:.1f} workers)"
    return {"workers_needed": needed, "keeps_up": keeps_up, "verdict": text}


def measure_loader(opts: DataBenchOptions, peaks: DevicePeaks | None = None) -> dict:
    """The record of ``peffnet data bench``: per resolution and decoder, loader vs model img/s. The model's
    training img/s at every resolution come from one alternating benchmark (``peaks``: the device's, if already
    measured)."""
    device = resolve_device(opts.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    decoders = ("cpu", "device") if opts.decode == "both" else (opts.decode,)
    resolutions = opts.resolutions or DEFAULT_RESOLUTIONS
    datasets = [build_dataset(opts.data, "train", r, True) for r in resolutions]
    if not isinstance(datasets[0], ImageDataset):
        raise ConfigError(f"{opts.data} is an in-memory dataset: its batches are tensor ops, not decoding; "
                          "bench an image folder or shards")
    specs = [BenchSpec(opts.model, {"norm": opts.norm}, r, channels_last=opts.channels_last) for r in resolutions]
    bench = run_bench(specs, BenchOptions(train=True, batch_size=opts.batch_size, device=str(device), amp=opts.amp,
                                          repeats=opts.repeats, warmup=1, iters=1,
                                          num_classes=datasets[0].num_classes), peaks)
    results = []
    for r, dataset, row in zip(resolutions, datasets, bench["results"], strict=True):
        model = row["train"]["img_per_s"]
        for decode in decoders:
            rates = loader_rates(dataset, decode, device, opts.batch_size, opts.repeats)
            results.append({"resolution": r, "decode": decode, **rates, "model_img_per_s": model,
                            **verdict(model, rates["loader_img_per_s_per_worker"], rates["finish_img_per_s"],
                                      device)})
    return {"data": opts.data, "model": f"{opts.model} ({opts.norm})", "batch_size": opts.batch_size,
            "amp": opts.amp, "channels_last": opts.channels_last, "cores": cores(), "env": environment(device),
            "load_average": os.getloadavg()[0], "results": results}


def format_loader(record: dict) -> str:
    """``peffnet data bench``'s table."""
    env = record["env"]
    lines = [f"{record['data']} on {env['device_name']}, {record['cores']} cores (load average "
             f"{record['load_average']:.1f}); model {record['model']}, batch {record['batch_size']}",
             f"{'res':>4s} {'decode':>6s} {'loader img/s/worker':>20s} {'finish img/s':>12s} "
             f"{'model img/s':>11s} {'workers needed':>14s}  verdict"]
    for r in record["results"]:
        lines.append(f"{r['resolution']:4d} {r['decode']:>6s} {r['loader_img_per_s_per_worker']:20.0f} "
                     f"{r['finish_img_per_s']:12.0f} {r['model_img_per_s']:11.0f} {r['workers_needed']:14.2f}  "
                     f"{r['verdict']}")
    return "\n".join(lines)


def device_loader_check(device: str = "cuda", resolutions: tuple[int, ...] = (128, 224), images: int = 256,
                        batch_size: int = 128, amp: bool = True, repeats: int = 3, work: Path | None = None,
                        peaks: DevicePeaks | None = None) -> dict:
    """Loader vs model img/s on ``device`` at each resolution, for ``scripts/device_check.py``: makes its own
    photo-like JPEG set (``images`` training files in a temporary folder, :mod:`peffnet.data.photos`), then
    measures both decoders (CPU workers; the device's nvJPEG) against the flagship model's training steps
    (G16 LN+PN B0, channels-last, AMP). Returns :func:`measure_loader`'s record; about a minute on one H100.
    The images go to a temporary folder inside ``work`` (default: the system's), removed at the end."""
    with tempfile.TemporaryDirectory(prefix="peffnet-photos-", dir=work) as tmp:
        classes = 8
        write_photo_folder(Path(tmp), classes, max(1, images // classes), 1, workers=min(8, cores()))
        opts = DataBenchOptions(data=f"imagefolder:{tmp}", resolutions=list(resolutions), device=device,
                                decode="both", batch_size=batch_size, repeats=repeats, amp=amp)
        return measure_loader(opts, peaks)
