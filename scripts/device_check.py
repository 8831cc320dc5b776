"""The GPU check: run it first whenever a GPU is lent (at most 8 minutes on one H100, one process).

    PYTHONPATH=src python3 scripts/device_check.py --out OUT          # on the GPU machine (torch 2.11+)
    python scripts/device_check.py --device cpu --quick --out OUT     # dry run: every check, tiny sizes

It needs only what peffnet imports (torch, timm; onnxruntime for the export check) and writes one JSON,
``OUT/device_check.json``, rewritten after every check so that a run cut short keeps what it measured. Each
check has a ``status``: ``pass``, ``fail`` (with the error's last line) or ``skip`` (with the reason).

Correctness: training steps of G1-BN, G16-GN and G16-LN+PN (plain and fused form) in fp32, bf16 and fp16
(with a grad scaler) against a CPU float64 reference (loss and gradient direction within the precision's
tolerance, three more steps finite); a checkpoint written on the device resumes on the CPU; the folded
LN+PN model matches the plain one and exports to ONNX; a one-process DDP step (NCCL on CUDA, gloo on CPU,
micro-batches exercising ``no_sync``); a ``torch.compile`` training step matches eager.

Speed (paper Sections 4.4-4.5): timm's EfficientNet-B0, ours G1-BN, G16-GN and G16-LN+PN at 224 px and half
resolution (160 px), channels_last, NCHW for two of them and compiled ones, AMP, all in one alternating run
(:func:`peffnet.measure.bench.run_bench`: training and inference img/s, batch-1 latency, peak memory, MAC
utilization against the matmul peak measured in the autocast precision; TF32 settings recorded). Run from the
repository it also runs ``benchmarks/run_suite.py``'s comparisons at GPU sizes, so that RESULTS.md shows
the GPU's column beside the CPU's.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if (REPO / "src" / "peffnet").is_dir() and str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))  # run from the source tree without installing

import peffnet  # noqa: E402
from peffnet.measure.bench import BenchOptions, run_bench  # noqa: E402
from peffnet.measure.subjects import BenchSpec  # noqa: E402

MODELS = {"G1-BN": ("efficientnet_b0", "bn"), "G16-GN": ("g16_efficientnet_b0", "gn"),
          "G16-LN+PN": ("g16_efficientnet_b0", "lnpn")}
TOLERANCE = {"fp32": 2e-3, "bf16": 5e-2, "fp16": 2e-2}  # relative loss error vs float64 (fp32: TF32 convs on GPU)
COSINE = {"fp32": 0.999, "bf16": 0.98, "fp16": 0.99}  # gradient direction vs float64


class Skip(Exception):
    """A check that cannot run here (its reason is recorded)."""


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def model_of(label: str, quick: bool, **kw: object) -> torch.nn.Module:
    """The seeded model; its classifier init scaled by 0.1 (timm's head_init_scale) keeps the 10 logits small,
    so that comparisons across precisions measure the network rather than the rounding of a few big logits."""
    name, norm = MODELS[label]
    torch.manual_seed(0)
    model = peffnet.create_model(name, norm=norm, num_classes=10, drop_rate=0.0, drop_path_rate=0.0, **kw)
    with torch.no_grad():
        model.classifier.weight.mul_(0.1)
    return model


# --------------------------------------------------------------------------- correctness


def check_train_steps(device: torch.device, quick: bool) -> dict:
    """Loss and gradients of one step against float64 on the CPU; three more steps stay finite."""
    res, batch = (64, 8) if quick else (128, 32)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 3, res, res, generator=gen), torch.randint(0, 10, (batch,), generator=gen)
    cases, worst = {}, "pass"
    for label in MODELS:
        forms = ("plain", "fused") if MODELS[label][1] == "lnpn" else ("plain",)
        reference = model_of(label, quick).double().train()
        ref_loss = F.cross_entropy(reference(x.double()), y)
        ref_loss.backward()
        ref_grad = torch.cat([p.grad.flatten() for p in reference.parameters()])
        for form in forms:
            for precision in ("fp32", "bf16", "fp16"):
                model = model_of(label, quick).to(device).train()
                if form == "fused":
                    peffnet.fuse_proxy_norm(model)
                # step 0 unscaled, for the comparison; then steps as training takes them (fp16: loss scaling,
                # which skips the updates whose gradients overflowed while it finds its scale)
                scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
                optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
                losses = []
                for step in range(3 if quick else 4):
                    with autocast(device, precision):
                        logits = model(x.to(device))
                    loss = F.cross_entropy(logits.float(), y.to(device))
                    if step == 0:
                        loss.backward()
                        grad = torch.cat([p.grad.double().flatten().cpu() for p in model.parameters()])
                        optimizer.step()
                    else:
                        scaler.scale(loss).backward()
                        scaler.step(optimizer)
                        scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    losses.append(loss.item())
                rel = abs(losses[0] - ref_loss.item()) / abs(ref_loss.item())
                cosine = F.cosine_similarity(grad, ref_grad, dim=0).item()
                ok = rel <= TOLERANCE[precision] and cosine >= COSINE[precision] and all(map(_finite, losses))
                cases[f"{label} {form} {precision}"] = {"loss": losses[0], "reference_loss": ref_loss.item(),
                                                        "loss_rel_error": rel, "grad_cosine": cosine,
                                                        "later_losses": losses[1:], "ok": ok}
                worst = worst if ok else "fail"
    return {"status": worst, "resolution": res, "batch": batch, "cases": cases,
            "tolerance": {"loss_rel_error": TOLERANCE, "grad_cosine": COSINE}}


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")


def tiny_train(out: Path, device: str, *extra: str) -> list[str]:
    return ["train", "--model", "g16_efficientnet_b0", "--norm", "lnpn", "--data", "synthetic", "--subset", "64",
            "--val-subset", "32", "--batch-size", "16", "--resolution", "32", "--epochs", "2", "--no-progress",
            "--drop-rate", "0", "--drop-path-rate", "0", "--mixup-alpha", "0", "--lr", "0.003", "--recipe-epochs",
            "0", "--head-init-scale", "0", "--checkpoint-every", "1", "--device", device, "--out", str(out), *extra]


def check_checkpoint_to_cpu(device: torch.device, quick: bool, work: Path) -> dict:
    """A run interrupted on the device after 5 steps resumes on the CPU and finishes."""
    from peffnet.checkpoint import load_checkpoint
    from peffnet.cli import main
    from peffnet.training import loop

    run = work / "gpu_run"
    real, calls = loop.train_step, []

    def interrupted(*a: object, **k: object) -> float:
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    loop.train_step = interrupted
    try:
        code = main(tiny_train(run, device.type))
    finally:
        loop.train_step = real
    written = load_checkpoint(run / "checkpoint.pt")
    if code == 0 or written["step"] != 5:
        raise RuntimeError(f"the interrupted run returned {code} with a checkpoint at step {written['step']}")
    if main(tiny_train(run, "cpu", "--resume")) != 0:
        raise RuntimeError("resuming on the CPU failed")
    summary = json.loads((run / "summary.json").read_text())
    final = load_checkpoint(run / "checkpoint.pt")
    finite = all(torch.isfinite(t).all() for t in final["model"].values() if t.is_floating_point())
    return {"status": "pass" if finite and final["step"] == 8 else "fail", "written_on": str(device),
            "resumed_at_step": written["step"], "final_step": final["step"], "top1": summary["top1"],
            "device_of_finish": summary["device"]}


def check_fold_and_export(device: torch.device, quick: bool, work: Path) -> dict:
    """Folded LN+PN equals plain LN+PN on the device; the trained LN+PN checkpoint exports to ONNX."""
    res = 32 if quick else 224
    model = model_of("G16-LN+PN", quick).to(device).eval()
    x = torch.randn(8, 3, res, res, device=device)
    with torch.no_grad():
        plain = model(x)
        folded = peffnet.fold_proxy_norm(copy.deepcopy(model))(x)
    rel = ((folded - plain).abs().max() / plain.abs().max()).item()
    record = {"resolution": res, "fold_max_rel_diff": rel}
    try:
        from peffnet.serving.export import export_checkpoint

        result = export_checkpoint(work / "gpu_run", "onnx", out=work / "model.onnx")
        record["onnx_max_abs_diff"] = result.max_abs_diff
    except ImportError as err:
        record["onnx"] = f"skipped: {err}"
    return {"status": "pass" if rel <= 1e-4 else "fail", **record}


def check_ddp(device: torch.device, quick: bool) -> dict:
    """One DDP step in a one-process group, two micro-batches (the first under ``no_sync``)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from peffnet.training.loop import StepSettings, train_step

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=0, world_size=1)
    try:
        model = model_of("G16-GN", quick).to(device)
        reference = copy.deepcopy(model)
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
        settings = StepSettings(micro_batch_size=4, num_classes=10)
        loss = train_step(net, torch.optim.SGD(model.parameters(), lr=0.0), torch.amp.GradScaler(device.type,
                          enabled=False), x, y, settings).item()
        ref = train_step(reference, torch.optim.SGD(reference.parameters(), lr=0.0), torch.amp.GradScaler(
            device.type, enabled=False), x, y, settings).item()
    finally:
        dist.destroy_process_group()
    return {"status": "pass" if abs(loss - ref) <= 1e-4 * abs(ref) else "fail", "backend": backend, "loss": loss,
            "loss_without_ddp": ref}


def check_compile(device: torch.device, quick: bool) -> dict:
    """One compiled training step of the plain G16-LN+PN model equals the eager one (``--quick``: graph capture
    with the ``aot_eager`` backend, since generating and compiling C++ kernels takes minutes on a CPU)."""
    res = 32 if quick else 128
    backend = "aot_eager" if quick else "inductor"
    x, y = torch.randn(8, 3, res, res, device=device), torch.randint(0, 10, (8,), device=device)
    losses = {}
    for mode in ("eager", "compiled"):
        model = model_of("G16-LN+PN", quick).to(device).train()
        net = torch.compile(model, backend=backend) if mode == "compiled" else model
        start = time.perf_counter()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        losses[mode] = (loss.item(), time.perf_counter() - start)
    rel = abs(losses["compiled"][0] - losses["eager"][0]) / abs(losses["eager"][0])
    return {"status": "pass" if rel <= 1e-3 else "fail", "backend": backend, "loss_rel_diff": rel,
            "first_step_s": {k: v[1] for k, v in losses.items()}}


# --------------------------------------------------------------------------- speed


def check_speed(device: torch.device, quick: bool) -> dict:
    """One alternating run: peers and ours at native and half resolution, layouts, compiled."""
    native, half = (64, 32) if quick else (224, 160)
    batch = 2 if quick else 128
    g16 = "g16_efficientnet_b0"
    specs = [BenchSpec("timm:efficientnet_b0", resolution=native, channels_last=True, label="timm B0"),
             BenchSpec("efficientnet_b0", resolution=native, channels_last=True, label="G1-BN")]
    for label, norm in (("G16-GN", "gn"), ("G16-LN+PN", "lnpn")):
        specs.append(BenchSpec(g16, {"norm": norm}, native, channels_last=True, label=label))
    for label, (name, norm) in MODELS.items():
        specs.append(BenchSpec(name, {"norm": norm}, half, channels_last=True, label=f"{label} half"))
    for label, norm in (("G16-GN", "gn"), ("G16-LN+PN", "lnpn")):
        specs.append(BenchSpec(g16, {"norm": norm}, native, label=f"{label} NCHW"))
        if not quick:  # compiling costs minutes on a CPU; the compile check covers it there
            specs.append(BenchSpec(g16, {"norm": norm}, native, channels_last=True, compile=True,
                                   label=f"{label} compiled"))
    opts = BenchOptions(batch_size=batch, device=str(device), amp=True,
                        amp_dtype="bfloat16", warmup=1 if quick else 3, repeats=1 if quick else 5,
                        iters=1 if quick else 5, latency_iters=1 if quick else 10)
    result = run_bench(specs, opts)
    over = [r["label"] for r in result["results"] for m in ("train", "infer")
            if m in r and r[m]["mac_utilization"] > 1.0]
    return {"status": "fail" if over else "pass", "above_peak": over, **result}


def check_suite(device: torch.device, quick: bool, results: Path) -> dict:
    """``benchmarks/run_suite.py``'s comparisons at GPU sizes: the device's column of RESULTS.md (written into
    ``results``: the repository's ``benchmarks/results`` by default)."""
    suite = REPO / "benchmarks" / "run_suite.py"
    if not suite.is_file():
        raise Skip("not run from the repository (benchmarks/run_suite.py is missing)")
    sys.path.insert(0, str(suite.parent))
    import run_suite

    argv = ["--device", device.type, "--only", "peers", "group_size", "norms", "resolution", "channels_last",
            "--results", str(results), "--markdown", str(results.parent / "RESULTS.md")]
    argv += ["--quick"] if quick else ["--check"]
    if run_suite.main(argv) != 0:
        raise RuntimeError("run_suite.py failed")
    return {"status": "pass", "command": "python benchmarks/run_suite.py " + " ".join(argv)}


# --------------------------------------------------------------------------- driver


def environment(device: torch.device) -> dict:
    import timm

    env = {"torch": torch.__version__, "timm": timm.__version__, "peffnet": peffnet.__version__,
           "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(),
                   tf32={"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32})
    return env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for device_check.json")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (a dry run)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one round: every check in minutes on a CPU")
    p.add_argument("--budget", type=float, default=480, help="seconds; checks that would start later are skipped")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results",
                   help="where the suite check writes its JSON (RESULTS.md beside it)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("device_check.py: error: no CUDA device here; use --device cpu --quick for a dry run", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    work.mkdir(exist_ok=True)
    record = {"command": " ".join(["scripts/device_check.py", *(argv if argv is not None else sys.argv[1:])]),
              "env": environment(device), "quick": args.quick, "checks": {}}
    checks: list[tuple[str, Callable[[], dict]]] = [
        ("train_steps", lambda: check_train_steps(device, args.quick)),
        ("checkpoint_to_cpu", lambda: check_checkpoint_to_cpu(device, args.quick, work)),
        ("fold_and_export", lambda: check_fold_and_export(device, args.quick, work)),
        ("ddp", lambda: check_ddp(device, args.quick)),
        ("compile", lambda: check_compile(device, args.quick)),
        ("speed", lambda: check_speed(device, args.quick)),
        ("suite", lambda: check_suite(device, args.quick, args.results)),
    ]
    start = time.perf_counter()
    for name, fn in checks:
        t0 = time.perf_counter()
        if t0 - start > args.budget:
            result = {"status": "skip", "reason": f"time budget of {args.budget:.0f} s spent"}
        else:
            print(f"device_check: {name}", file=sys.stderr, flush=True)
            try:
                result = fn()
            except Skip as why:
                result = {"status": "skip", "reason": str(why)}
            except Exception as err:  # a failed check is a result; the next checks still run
                result = {"status": "fail", "error": f"{type(err).__name__}: {str(err).strip().splitlines()[-1:]}",
                          "traceback": traceback.format_exc()[-3000:]}
        result["seconds"] = time.perf_counter() - t0
        record["checks"][name] = result
        record["wall_time_s"] = time.perf_counter() - start
        (args.out / "device_check.json").write_text(json.dumps(record, indent=1) + "\n")
        print(f"device_check: {name}: {result['status']} ({result['seconds']:.0f} s)", file=sys.stderr, flush=True)
    failed = [n for n, r in record["checks"].items() if r["status"] == "fail"]
    print(f"device_check: {len(record['checks']) - len(failed)}/{len(record['checks'])} not failed "
          f"({record['wall_time_s']:.0f} s) -> {args.out / 'device_check.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
