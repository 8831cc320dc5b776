"""Does the data pipeline keep up with training? Loader img/s vs model img/s (point 3).

    python benchmarks/bench_loader.py              # CPU, fashion-mnist + synthetic, ~2 minutes on 2 cores
    python benchmarks/bench_loader.py --device cuda --batch-size 768

For each dataset at its default training resolution, one process alternates, after warm-up:
A) producing one training batch with the loader of ``peffnet train`` (index, augment, resize, normalize),
B) one training step of the flagship model (G16 LN+PN B0, RMSProp, channels-last) on such a batch;
each figure is the median over rounds. The loader must be faster than the model (ratio > 1).
Results: ``benchmarks/loader.json`` and ``benchmarks/LOADER.md``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see docs/benchmarks.md: no spinning on a shared CPU

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

import peffnet  # noqa: E402
from peffnet.data import build_dataset, default_resolution, make_loader  # noqa: E402
from peffnet.models import build, preset  # noqa: E402
from peffnet.runtime.optim import rmsprop_tf  # noqa: E402
from peffnet.runtime.step import StepSettings, train_step  # noqa: E402
from peffnet.training.distributed import pick_device  # noqa: E402

HERE = Path(__file__).resolve().parent


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(spec: str, model_name: str, norm: str, batch: int, rounds: int, device: torch.device) -> dict:
    """Median img/s of the loader (A) and of a training step (B), measured in alternation."""
    resolution = default_resolution(spec) or preset(model_name).resolution
    dataset = build_dataset(spec, "train", resolution, True)
    loader = make_loader(dataset, batch, train=True, seed=0)
    torch.manual_seed(0)
    model = build(preset(model_name, norm=norm, num_classes=dataset.num_classes, in_chans=dataset.in_chans))
    model = model.to(device).to(memory_format=torch.channels_last)
    optimizer = rmsprop_tf(model, lr=batch * 2**-14, decay=1 - batch * 2**-14)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    settings = StepSettings(batch, dataset.num_classes, 0.1, 0.1, 1.0, "off", True)
    loader_rates, model_rates, epoch = [], [], 0
    batches = iter(())
    for r in range(rounds + 2):  # two warm-up rounds
        tick = time.perf_counter()
        try:
            images, labels = next(batches)
        except StopIteration:
            loader.set_epoch(epoch)
            epoch += 1
            batches = iter(loader)
            tick = time.perf_counter()
            images, labels = next(batches)
        loader_s = time.perf_counter() - tick
        sync(device)
        tick = time.perf_counter()
        train_step(model, optimizer, scaler, images, labels, settings)
        sync(device)
        model_s = time.perf_counter() - tick
        if r >= 2:
            loader_rates.append(batch / loader_s)
            model_rates.append(batch / model_s)
    ratios = [a / b for a, b in zip(loader_rates, model_rates, strict=True)]
    return {"dataset": spec, "resolution": resolution, "batch_size": batch, "model": model_name, "norm": norm,
            "loader_img_per_s": statistics.median(loader_rates), "model_img_per_s": statistics.median(model_rates),
            "loader_over_model": statistics.median(ratios), "rounds": rounds}


def cpu_name() -> str:
    """The CPU's model name (Linux), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["fashion-mnist", "synthetic"])
    parser.add_argument("--model", default="g16_efficientnet_b0")
    parser.add_argument("--norm", default="lnpn")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = pick_device(args.device)
    rows = [measure(spec, args.model, args.norm, args.batch_size, args.rounds, device) for spec in args.datasets]
    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else
           f"{cpu_name()}, {torch.get_num_threads()} threads",
           "load_average": os.getloadavg()[0],
           "torch": torch.__version__, "peffnet": peffnet.__version__, "python": platform.python_version(),
           "command": "python benchmarks/bench_loader.py " + " ".join(
               f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}" for k, v in vars(args).items())}
    (HERE / "loader.json").write_text(json.dumps({"environment": env, "results": rows}, indent=2) + "\n")
    lines = ["# Data pipeline vs model speed", "",
             f"Generated by `{env['command']}` on {env['device']} (torch {env['torch']}; load average "
             f"{env['load_average']:.1f} when it ran: absolute img/s drift with the load, the ratio much less). "
             "A = one training batch "
             "from the loader of `peffnet train`; B = one training step of the model on it; measured in "
             "alternation in one process, medians over rounds. The loader keeps up when A/B > 1.", "",
             "| dataset | resolution | batch | loader img/s | model img/s (train step) | loader / model |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['resolution']} | {r['batch_size']} | {r['loader_img_per_s']:.0f} | "
              f"{r['model_img_per_s']:.0f} ({r['model']}, {r['norm']}) | {r['loader_over_model']:.1f}x |" for r in rows]
    (HERE / "LOADER.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
