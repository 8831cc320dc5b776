"""What proxy normalization costs: training and inference throughput of B0 G16 with GN, LN and LN+PN.

    python benchmarks/bench_norms.py                     # CPU, 64 px, batch 32, 1 thread: 4-6 minutes
    python benchmarks/bench_norms.py --profile lnpn      # torch.profiler table of one training step, no files
    python benchmarks/bench_norms.py --compile --modes infer   # every model torch.compile'd (about 3 minutes)

One process builds ``g16_efficientnet_b0`` with each normalization (and LN+PN folded by
``peffnet.fold_proxy_norm`` for inference), then, after warm-up rounds, alternates: every round times one
step of every model. A training step is forward + backward + RMSProp step; an inference step is an eval,
``torch.inference_mode`` forward. The table gives each model's median img/s and its median per-round ratio
to the reference (GN for training, LN for inference), which is fair even when the machine's load drifts.
Process CPU time is recorded beside wall time: with one intra-op thread (the default) it counts the work done
and not the time the process waited for a core, so its ratios stay meaningful on a shared, loaded machine.
Goals: LN+PN training >= 0.9x GN, LN+PN inference >= 0.97x LN (met only if both ratios reach them).
With ``--compile`` each model (the folded one included) is ``torch.compile``'d and warmed up before timing.
Results: ``benchmarks/results/norms_<device>[_<R>px][_cl][_compiled].json`` and ``.md`` (``_<R>px`` when not
64 px).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # no spinning OpenMP threads on a shared CPU (docs/benchmarks.md)

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

import peffnet  # noqa: E402

HERE = Path(__file__).resolve().parent
MODEL = "g16_efficientnet_b0"
TRAIN = {"gn": "gn", "ln": "ln", "lnpn": "lnpn"}  # label -> norm
INFER = {"gn": "gn", "ln": "ln", "lnpn": "lnpn", "lnpn folded": "lnpn"}
GOALS = {"train": ("lnpn", "gn", 0.9), "infer": ("lnpn", "ln", 0.97)}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    return f"CPU: {model or platform.processor()} ({torch.get_num_threads()} threads)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(norm: str, args: argparse.Namespace, device: torch.device, folded: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    model = peffnet.create_model(MODEL, norm=norm, num_classes=10, drop_rate=0, drop_path_rate=0)
    model = model.to(device, memory_format=torch.channels_last if args.channels_last else torch.contiguous_format)
    model = peffnet.fold_proxy_norm(model.eval()) if folded else model
    return torch.compile(model, dynamic=False) if args.compile else model


def train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-5, alpha=0.9, eps=1e-3, momentum=0.9)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def infer_step(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    model.eval()

    def step() -> None:
        with torch.inference_mode():
            model(x)

    return step


def measure(steps: dict[str, Callable[[], None]], reference: str, rounds: int, warmup: int, batch: int,
            device: torch.device, desc: str) -> dict[str, dict[str, float]]:
    """Alternate the steps round by round. Per model: median img/s by wall clock and by process CPU time,
    and the median per-round ratio of each to ``reference`` (higher = faster)."""
    wall: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    for r in tqdm(range(warmup + rounds), desc=desc, leave=False):
        for label, step in steps.items():
            sync(device)
            tick, tock = time.perf_counter(), time.process_time()
            step()
            sync(device)
            if r >= warmup:
                wall[label].append(time.perf_counter() - tick)
                cpu[label].append(time.process_time() - tock)

    def ratio(t: dict[str, list[float]], label: str) -> float:
        return statistics.median(ref / s for ref, s in zip(t[reference], t[label], strict=True))

    return {label: {"img_per_s": batch / statistics.median(wall[label]), "ratio": ratio(wall, label),
                    "cpu_img_per_s": batch / statistics.median(cpu[label]), "cpu_ratio": ratio(cpu, label),
                    "step_ms": 1e3 * statistics.median(wall[label])} for label in steps}


def profile(norm: str, args: argparse.Namespace, device: torch.device, x: torch.Tensor, y: torch.Tensor) -> None:
    from torch.profiler import profile as torch_profile

    step = train_step(build(norm, args, device), x, y)
    for _ in range(2):
        step()
    with torch_profile() as prof:
        for _ in range(3):
            step()
    print(f"3 training steps of {MODEL} {norm}, batch {args.batch_size}, {args.resolution} px, {device_name(device)}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def markdown(result: dict) -> str:
    lines = [f"# Normalization cost: {MODEL}", "",
             f"Command: `{result['command']}`  ",
             f"Device: {result['device']}; torch {result['torch']}; batch {result['batch_size']}, "
             f"{result['resolution']} px, {'channels-last' if result['channels_last'] else 'NCHW'}, "
             f"{'torch.compile' if result['compile'] else 'eager'}; "
             f"{result['rounds']} (training) / {result['infer_rounds']} (inference) alternating rounds after "
             f"{result['warmup']} warm-up rounds; medians; "
             f"1-min load average {result['load_average'][0]:.1f} before, {result['load_average'][1]:.1f} after.", ""]
    for mode, title in (("train", "Training (forward + backward + RMSProp step)"), ("infer", "Inference (eval)")):
        if mode not in result:
            continue
        ref = GOALS[mode][1]
        lines += [f"## {title}", "", f"| model | img/s | step ms | ratio to {ref} | CPU-time img/s | CPU-time ratio |",
                  "|---|---|---|---|---|---|"]
        for label, r in result[mode].items():
            lines.append(f"| {label} | {r['img_per_s']:.1f} | {r['step_ms']:.1f} | {r['ratio']:.3f}x "
                         f"| {r['cpu_img_per_s']:.1f} | {r['cpu_ratio']:.3f}x |")
        lines.append("")
    lines += ["## Goals", "", "Met only if both the wall-clock and the CPU-time ratio reach the goal.", "",
              "| goal | wall-clock ratio | CPU-time ratio | met |", "|---|---|---|---|"]
    for goal in result["goals"]:
        met = "yes" if goal["met"] else "no"
        lines.append(f"| {goal['what']} >= {goal['goal']} | {goal['measured']:.3f}x | {goal['cpu_measured']:.3f}x "
                     f"| {met} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=30, help="training rounds")
    parser.add_argument("--infer-rounds", type=int, default=90, help="inference rounds (steps are ~5x shorter)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads (default 1: on a shared CPU, CPU time then measures the work)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile every model (warm-up compiles)")
    parser.add_argument("--modes", nargs="+", choices=["train", "infer"], default=["train", "infer"])
    parser.add_argument("--profile", metavar="NORM", help="print a torch.profiler table of a training step instead")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x = torch.randn(args.batch_size, 3, args.resolution, args.resolution, device=device)
    x = x.contiguous(memory_format=torch.channels_last) if args.channels_last else x
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    if args.profile:
        profile(args.profile, args, device, x, y)
        return 0

    load_before = os.getloadavg()[0]
    results = {}
    if "train" in args.modes:
        results["train"] = measure({k: train_step(build(n, args, device), x, y) for k, n in TRAIN.items()}, "gn",
                                   args.rounds, args.warmup, args.batch_size, device, "training")
    if "infer" in args.modes:
        models = {k: build(n, args, device, folded=k.endswith("folded")) for k, n in INFER.items()}
        results["infer"] = measure({k: infer_step(m, x) for k, m in models.items()}, "ln", args.infer_rounds,
                                   args.warmup, args.batch_size, device, "inference")
    goals = []
    for mode, res in results.items():
        label, ref, goal = GOALS[mode]
        for what in [label] + ([f"{label} folded"] if f"{label} folded" in res else []):
            goals.append({"what": f"{what} / {ref}, {'training' if mode == 'train' else 'inference'}",
                          "goal": goal, "measured": res[what]["ratio"], "cpu_measured": res[what]["cpu_ratio"],
                          "met": min(res[what]["ratio"], res[what]["cpu_ratio"]) >= goal})
    result = {"model": MODEL, "device": device_name(device), "torch": torch.__version__,
              "command": " ".join(["python", "benchmarks/bench_norms.py", *map(shlex.quote, sys.argv[1:])]),
              "batch_size": args.batch_size, "resolution": args.resolution, "channels_last": args.channels_last,
              "compile": args.compile,
              "rounds": args.rounds, "infer_rounds": args.infer_rounds, "warmup": args.warmup,
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
              "threads": torch.get_num_threads(), "load_average": [load_before, os.getloadavg()[0]],
              **results, "goals": goals}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = (f"norms_{device.type}" + ("" if args.resolution == 64 else f"_{args.resolution}px")
            + ("_cl" if args.channels_last else "") + ("_compiled" if args.compile else ""))
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
