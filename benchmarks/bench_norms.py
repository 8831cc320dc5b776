"""What proxy normalization costs: training and inference throughput of B0 G16 with GN, LN and LN+PN.

    python benchmarks/bench_norms.py                     # CPU, 64 px, batch 32, 1 thread: 4-6 minutes
    python benchmarks/bench_norms.py --resolution 224 --batch-size 8 --modes infer   # B0's native resolution
    python benchmarks/bench_norms.py --profile "lnpn fused"   # torch.profiler table of training steps, no files
    python benchmarks/bench_norms.py --profile "lnpn folded" --modes infer --resolution 224 --batch-size 8
    python benchmarks/bench_norms.py --compile --modes infer   # every model torch.compile'd (minutes)

One process builds ``g16_efficientnet_b0`` with each normalization, ``--copies`` times each (default 2), then,
after warm-up rounds, alternates: every round times one step of every copy of every model, starting one step
later than the round before, and a model's time in a round is the mean over its copies. A training step is
forward + backward + RMSProp step of GN (the reference), LN, LN+PN as built (the plain model) and LN+PN after
``peffnet.fuse_proxy_norm`` (what eager CPU training uses); an inference step is an eval,
``torch.inference_mode`` forward of LN (the reference), GN, LN+PN as built (moments cached), LN+PN after
``peffnet.fold_proxy_norm``, and a control that no goal refers to: LN with its squeeze-excite gate multiplied
in place, as the folded model multiplies it (the plain model multiplies out of place, so that a hook holding a
layer's output keeps it unchanged); with ``--compile`` also the fused LN+PN, to compare compiled plain with
compiled fused. The table gives each model's median img/s and its median per-round ratio to the reference,
which is fair even when the machine's load drifts. Process CPU time is recorded beside wall time: with one
intra-op thread (the default) it counts the work done and not the time the process waited for a core, so its
ratios stay meaningful on a shared, loaded machine.

Goals (paper Section 3.2, Eq. 4: PN's moments are O(channels), so PN should cost little): fused LN+PN training
>= 0.92x GN, folded LN+PN inference >= 1.0x LN, and with ``--compile`` plain LN+PN inference >= 1.0x fused
(met only if the wall-clock and the CPU-time ratio both reach them).

Copies and rotation: where a model's weights and tensors land in memory moves its step time by up to about
1 % (each copy's ratio is in the table), and in a fixed order within the round a model's time depends on the
models before it: with one copy per model in a fixed order, folded LN+PN moved by more than 1 % against LN
between orderings (docs/proxy_norm.md). Copies built interleaved and a rotating order average both out.

Allocator: glibc hands large freed blocks back to the kernel (``munmap``, heap trimming), and every later
tensor that lands there faults its pages in again. At 224 px that was 15-20 % of an inference step, and how
much of it a model pays depends on the heap the models before it in the round left behind: two copies of the
same LN model measured 5 % apart. On glibc the benchmark therefore keeps freed memory mapped (``mallopt``:
mmap threshold 32 MiB, no trimming), as jemalloc or tcmalloc would; ``--system-malloc`` measures with glibc's
defaults.
Results: ``benchmarks/results/norms_<device>[_<R>px][_cl][_compiled].json`` and ``.md`` (``_<R>px`` when not
64 px).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # no spinning OpenMP threads on a shared CPU (docs/benchmarks.md)

import argparse  # noqa: E402
import ctypes  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import peffnet  # noqa: E402
from peffnet.layers.blocks import SqueezeExcite  # noqa: E402
from peffnet.runtime.device import device_name  # noqa: E402
from peffnet.runtime.optim import rmsprop_tf  # noqa: E402
from peffnet.runtime.step import StepSettings, grad_scaler  # noqa: E402
from peffnet.runtime.step import train_step as runtime_train_step  # noqa: E402

HERE = Path(__file__).resolve().parent
MODEL = "g16_efficientnet_b0"
# label -> (norm, pass applied after building); the first label of each mode is its reference
TRAIN = {"gn": ("gn", None), "ln": ("ln", None), "lnpn": ("lnpn", None), "lnpn fused": ("lnpn", "fuse")}
INFER = {"ln": ("ln", None), "gn": ("gn", None), "lnpn": ("lnpn", None), "lnpn folded": ("lnpn", "fold"),
         "ln, gate in place": ("ln", "inplace-gate")}
COMPILED_INFER = {"lnpn fused": ("lnpn", "fuse")}  # added with --compile
# (mode, label, reference, goal, needs --compile)
GOALS = [("train", "lnpn fused", "gn", 0.92, False), ("infer", "lnpn folded", "ln", 1.0, False),
         ("infer", "lnpn", "lnpn fused", 1.0, True)]
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def steady_allocator() -> str:
    """Keep freed memory mapped on glibc (see the module docstring); returns what the allocator is set to."""
    if platform.libc_ver()[0] != "glibc":
        return "system default"
    libc = ctypes.CDLL("libc.so.6")
    if libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) != 1 or libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) != 1:
        return "glibc default (mallopt failed)"
    return "glibc, mallopt: mmap threshold 32 MiB, no trimming"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class InPlaceGate(SqueezeExcite):
    """The control's squeeze-excite: gates its input in place without gradients, as the folded model's does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate(x.mean((2, 3), keepdim=True))
        return x * gate if torch.is_grad_enabled() else x.mul_(gate)


def build(norm: str, transform: str | None, args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    model = peffnet.create_model(MODEL, norm=norm, num_classes=10, drop_rate=0, drop_path_rate=0)
    model = model.to(device, memory_format=torch.channels_last if args.channels_last else torch.contiguous_format)
    if transform == "fuse":
        model = peffnet.fuse_proxy_norm(model)
    elif transform == "fold":
        model = peffnet.fold_proxy_norm(model.eval())
    elif transform == "inplace-gate":
        for module in model.modules():
            if type(module) is SqueezeExcite:
                module.__class__ = InPlaceGate
    return torch.compile(model, dynamic=False) if args.compile else model


def train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """The training step `peffnet train` takes (the recipe's RMSProp), at a tiny learning rate."""
    optimizer, scaler = rmsprop_tf(model, lr=1e-5, decay=0.9), grad_scaler(x.device, "off")
    settings = StepSettings(micro_batch_size=len(x), num_classes=10)
    model.train()
    return lambda: runtime_train_step(model, optimizer, scaler, x, y, settings)


def infer_step(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    model.eval()

    def step() -> None:
        with torch.inference_mode():
            model(x)

    return step


def build_copies(models: dict[str, tuple[str, str | None]], copies: int, step: Callable[..., Callable[[], None]],
                 args: argparse.Namespace, device: torch.device, *inputs: torch.Tensor) -> list[tuple[str, Callable]]:
    """``copies`` steps per label, built interleaved (labels in order, then in reverse order, ...)."""
    built = []
    for c in range(copies):
        labels = list(models) if c % 2 == 0 else list(reversed(models))
        built += [(label, step(build(*models[label], args, device), *inputs)) for label in labels]
    return built


def measure(steps: list[tuple[str, Callable[[], None]]], rounds: int, warmup: int, device: torch.device,
            desc: str) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, list[list[float]]]]:
    """Run every step once per round, round ``r`` starting at step ``r``; per label, the mean over its copies of
    the wall-clock and of the process-CPU seconds of every timed round, and each copy's wall-clock seconds."""
    n = len(steps)
    wall_runs: list[list[float]] = [[] for _ in steps]
    cpu_runs: list[list[float]] = [[] for _ in steps]
    for r in tqdm(range(warmup + rounds), desc=desc, leave=False):
        for j in range(n):
            i = (r + j) % n
            sync(device)
            tick, tock = time.perf_counter(), time.process_time()
            steps[i][1]()
            sync(device)
            if r >= warmup:
                wall_runs[i].append(time.perf_counter() - tick)
                cpu_runs[i].append(time.process_time() - tock)
    copies = {label: [i for i, (k, _) in enumerate(steps) if k == label] for label, _ in steps}
    per_copy = {label: [wall_runs[i] for i in idx] for label, idx in copies.items()}

    def mean_of_copies(runs: list[list[float]], idx: list[int]) -> list[float]:
        return [statistics.fmean(round_times) for round_times in zip(*(runs[i] for i in idx), strict=True)]

    wall = {label: mean_of_copies(wall_runs, idx) for label, idx in copies.items()}
    cpu = {label: mean_of_copies(cpu_runs, idx) for label, idx in copies.items()}
    return wall, cpu, per_copy


def ratio(times: dict[str, list[float]], label: str, reference: str) -> float:
    """Median over rounds of ``reference``'s time over ``label``'s (higher = ``label`` faster)."""
    return statistics.median(ref / t for ref, t in zip(times[reference], times[label], strict=True))


def summarize(wall: dict[str, list[float]], cpu: dict[str, list[float]], per_copy: dict[str, list[list[float]]],
              reference: str, batch: int) -> dict[str, dict]:
    """Per label: median img/s by wall clock and by process CPU time, the ratios to ``reference`` (the mean of
    its copies), and each copy's wall-clock ratio to it."""
    return {label: {"img_per_s": batch / statistics.median(wall[label]), "ratio": ratio(wall, label, reference),
                    "cpu_img_per_s": batch / statistics.median(cpu[label]), "cpu_ratio": ratio(cpu, label, reference),
                    "step_ms": 1e3 * statistics.median(wall[label]),
                    "copy_ratios": [statistics.median(ref / t for ref, t in zip(wall[reference], times, strict=True))
                                    for times in per_copy[label]]} for label in wall}


def profile(label: str, args: argparse.Namespace, device: torch.device, x: torch.Tensor, y: torch.Tensor) -> None:
    from torch.profiler import profile as torch_profile

    mode = "training" if "train" in args.modes else "inference"
    if mode == "training" and label not in TRAIN:
        print(f"bench_norms.py: {label!r} has no training step; add --modes infer", file=sys.stderr)
        raise SystemExit(2)
    step = (train_step(build(*TRAIN[label], args, device), x, y) if mode == "training"
            else infer_step(build(*INFER[label], args, device), x))
    for _ in range(2):
        step()
    with torch_profile() as prof:
        for _ in range(3):
            step()
    print(f"3 {mode} steps of {MODEL} {label}, batch {args.batch_size}, {args.resolution} px, {device_name(device)}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def markdown(result: dict) -> str:
    lines = [f"# Normalization cost: {MODEL}", "",
             f"Command: `{result['command']}`  ",
             f"Device: {result['device']}; torch {result['torch']}; batch {result['batch_size']}, "
             f"{result['resolution']} px, {'channels-last' if result['channels_last'] else 'NCHW'}, "
             f"{'torch.compile' if result['compile'] else 'eager'}; "
             f"{result['copies']} copies of each model; {result['rounds']} (training) / {result['infer_rounds']} "
             f"(inference) rounds in rotating order after {result['warmup']} warm-up rounds; medians; "
             f"allocator: {result['allocator']}; "
             f"1-min load average {result['load_average'][0]:.1f} before, {result['load_average'][1]:.1f} after.", ""]
    for mode, title in (("train", "Training (forward + backward + RMSProp step)"), ("infer", "Inference (eval)")):
        if mode not in result:
            continue
        ref = next(iter(result[mode]))
        lines += [f"## {title}", "", f"| model | img/s | step ms | ratio to {ref} | CPU-time img/s | CPU-time ratio "
                  "| each copy's ratio |", "|---|---|---|---|---|---|---|"]
        for label, r in result[mode].items():
            copies = " / ".join(f"{c:.3f}" for c in r["copy_ratios"])
            lines.append(f"| {label} | {r['img_per_s']:.1f} | {r['step_ms']:.1f} | {r['ratio']:.3f}x "
                         f"| {r['cpu_img_per_s']:.1f} | {r['cpu_ratio']:.3f}x | {copies} |")
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
    parser.add_argument("--copies", type=int, default=2, help="instances of each model (see the module docstring)")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads (default 1: on a shared CPU, CPU time then measures the work)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile every model (warm-up compiles)")
    parser.add_argument("--modes", nargs="+", choices=["train", "infer"], default=["train", "infer"])
    parser.add_argument("--system-malloc", action="store_true",
                        help="measure with glibc's default allocator settings (see the module docstring)")
    parser.add_argument("--profile", metavar="MODEL", choices=list(dict.fromkeys([*TRAIN, *INFER])),
                        help="print a torch.profiler table of 3 steps of one model instead: training steps, or "
                             "inference steps with --modes infer")
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

    allocator = "system default" if args.system_malloc else steady_allocator()
    load_before = os.getloadavg()[0]
    results, times = {}, {}
    if "train" in args.modes:
        steps = build_copies(TRAIN, args.copies, train_step, args, device, x, y)
        times["train"] = measure(steps, args.rounds, args.warmup, device, "training")
    if "infer" in args.modes:
        models = {**INFER, **(COMPILED_INFER if args.compile else {})}
        steps = build_copies(models, args.copies, infer_step, args, device, x)
        times["infer"] = measure(steps, args.infer_rounds, args.warmup, device, "inference")
    for mode, (wall, cpu, per_copy) in times.items():
        results[mode] = summarize(wall, cpu, per_copy, next(iter(wall)), args.batch_size)
    goals = []
    for mode, label, ref, goal, compiled in GOALS:
        if mode in times and compiled == args.compile:
            wall, cpu, _ = times[mode]
            measured, cpu_measured = ratio(wall, label, ref), ratio(cpu, label, ref)
            goals.append({"what": f"{label} / {ref}, {'training' if mode == 'train' else 'inference'}",
                          "goal": goal, "measured": measured, "cpu_measured": cpu_measured,
                          "met": min(measured, cpu_measured) >= goal})
    result = {"model": MODEL, "device": device_name(device), "torch": torch.__version__,
              "command": " ".join(["python", "benchmarks/bench_norms.py", *map(shlex.quote, sys.argv[1:])]),
              "batch_size": args.batch_size, "resolution": args.resolution, "channels_last": args.channels_last,
              "compile": args.compile,
              "rounds": args.rounds, "infer_rounds": args.infer_rounds, "warmup": args.warmup, "copies": args.copies,
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "allocator": allocator,
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
