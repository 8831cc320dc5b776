"""Fault injection: interrupt and damage tiny training and fine-tuning runs as a cluster would, start each again
with the same command line until it ends, and count the runs whose final weights equal an uninterrupted run's
bit for bit.

    python scripts/fault_injection.py --runs 24 --out /tmp/faults

Each run is a tiny synthetic run on one CPU thread (docs/training.md, "Preemption, restarts and failures"):
``peffnet train`` (3 epochs of 8 steps, a checkpoint every 2 steps, 2 kept) or ``peffnet finetune`` of the
reference training (2 epochs of 8 steps). Each gets 1 to 3 faults, drawn at random (seeded), each in a new
process started with the same command, at a random moment of its training: 0-0.3 s after a step drawn from
those the process has left (a step takes about 0.1-0.3 s here, so the moment falls in a step, an evaluation
or a checkpoint write):

- SIGKILL;
- SIGKILL during a checkpoint write (the first one to start after that moment, 0-0.15 s after its temporary
  file appears);
- SIGTERM (the run finishes its step, checkpoints and exits 143);
- after a SIGKILL, when an older checkpoint exists, damage to the newest: 4 KiB of garbage in its middle,
  truncation to half, random bytes, or deletion.

Then the same command runs until it exits 0. A run counts as equal when the live and the averaged weights of its
``checkpoint.pt`` equal the uninterrupted run's bit for bit and its metrics hold every step once. A resume that
finds a damaged checkpoint the script did not damage counts as a torn checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["--model", "efficientnet_b0", "--norm", "gn", "--data", "synthetic", "--subset", "64", "--val-subset", "16",
         "--batch-size", "8", "--resolution", "32", "--no-progress", "--drop-rate", "0", "--drop-path-rate", "0",
         "--mixup-alpha", "0", "--cutmix-lambda", "1", "--lr", "0.003", "--warmup-epochs", "0.5",
         "--head-init-scale", "0", "--recipe-epochs", "0", "--epochs", "3", "--checkpoint-every", "2"]
FINETUNE = ["--resolution", "32", "--stages", "3", "--epochs", "2", "--data", "synthetic", "--subset", "64",
            "--val-subset", "16", "--batch-size", "8", "--no-progress", "--checkpoint-every", "2"]
STEPS = {"train": 24, "finetune": 16}  # steps of a whole run
DAMAGES = ("garbage", "truncated", "random", "deleted")


def command(kind: str, out: Path, parent: Path) -> list[str]:
    args = ["train", *TRAIN] if kind == "train" else ["finetune", str(parent), *FINETUNE]
    return [sys.executable, "-m", "peffnet", *args, "--out", str(out)]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    with log.open("a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
    return subprocess.Popen(cmd, stdout=log.open("a"), stderr=subprocess.STDOUT, env=env)


def steps_logged(out: Path) -> int:
    """The last step in metrics.jsonl (0 before the first), for the record."""
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    steps = [json.loads(line)["step"] for line in lines[-3:] if line.endswith("}")]
    return max(steps, default=0)


def started(log: Path, kind: str, launches: int) -> bool:
    """Whether the ``launches``-th process of a run has printed its first line (its banner)."""
    return log.read_text().count(f"peffnet {kind}: efficientnet_b0") >= launches


def resumed_at(log: Path) -> int:
    """The step the last process of a run resumed from (0: it started afresh)."""
    text = log.read_text()
    last = text[text.rfind("\n$ "):]
    marker = last.rfind("resuming from ")
    return int(last[last.index("(step ", marker) + 6: last.index(")", marker)]) if marker >= 0 else 0


def new_steps(out: Path, since: float) -> int:
    """The last step this process logged: metrics.jsonl is cut back to the resume step when a process starts,
    so a file not written since ``since`` (its first line) may still hold an earlier process's steps."""
    try:
        return steps_logged(out) if (out / "metrics.jsonl").stat().st_mtime > since else 0
    except OSError:
        return 0


def wait(proc: subprocess.Popen, condition: object, timeout: float = 600) -> bool:
    """Poll ``condition()`` until it holds (True) or the process ends (False)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if condition():
            return True
        if time.monotonic() > deadline:
            raise TimeoutError("the run made no progress")
        time.sleep(0.002)
    return False


def damage(out: Path, how: str) -> None:
    newest = out / "checkpoint.pt"
    if how == "deleted":
        newest.unlink()
        return
    data = newest.read_bytes()
    if how == "garbage":
        data = data[: len(data) // 2] + os.urandom(4096) + data[len(data) // 2 + 4096:]
    elif how == "truncated":
        data = data[: len(data) // 2]
    else:
        data = os.urandom(len(data))
    newest.write_bytes(data)


def inject(proc: subprocess.Popen, out: Path, fault: str, step: int, since: float, rng: random.Random
           ) -> str | None:
    """Apply ``fault`` to the running ``proc`` 0-0.3 s after it logged ``step``; the fault's description, or None
    when the run ended first."""
    if not wait(proc, lambda: new_steps(out, since) >= step):
        return None
    time.sleep(rng.uniform(0, 0.3))
    if fault == "kill-write":
        if not wait(proc, lambda: any(out.glob(".checkpoint.pt.*.tmp"))):
            return None
        time.sleep(rng.uniform(0, 0.15))  # a 65 MB write takes 0.1-0.3 s here
    if proc.poll() is not None:
        return None
    step = steps_logged(out)
    proc.send_signal(signal.SIGTERM if fault == "term" else signal.SIGKILL)
    code = proc.wait()
    if fault == "kill-write":
        orphan = any(out.glob(".checkpoint.pt.*.tmp"))
        return f"SIGKILL {'during' if orphan else 'just after'} a checkpoint write (after step {step})"
    if fault == "term":
        return f"SIGTERM after step {step} (exit {code})"
    return f"SIGKILL after step {step}"


def same_weights(a: Path, b: Path) -> bool:
    sa, sb = (torch.load(d / "checkpoint.pt", map_location="cpu", weights_only=True) for d in (a, b))
    return all(sa[key].keys() == sb[key].keys() and all(torch.equal(sa[key][k], sb[key][k]) for k in sa[key])
               for key in ("model", "averaged"))


def one_run(kind: str, index: int, out: Path, reference: Path, parent: Path, rng: random.Random) -> dict:
    cmd, log = command(kind, out, parent), out.parent / f"{out.name}.log"
    faults, damaged, launches, code = [], [], 0, None
    for _ in range(rng.randint(1, 3)):
        fault = rng.choice(["kill", "kill", "kill-write", "term"])
        proc = start(cmd, log)
        launches += 1
        done = None
        if wait(proc, lambda n=launches: started(log, kind, n)):
            since = time.time()
            time.sleep(0.05)  # the line about the resume follows the first line
            step = rng.randint(min(resumed_at(log) + 1, STEPS[kind]), STEPS[kind])  # (a finished run: its end)
            done = inject(proc, out, fault, step, since, rng)
        if done is None:  # the run ended before the fault: no more faults
            code = proc.wait()
            break
        if fault != "term" and len(list(out.glob("checkpoint-step*.pt"))) and rng.random() < 0.5:
            how = rng.choice(DAMAGES) if (out / "checkpoint.pt").exists() else None
            if how is not None:
                damage(out, how)
                done += f", then the newest checkpoint {how}"
                damaged.append(how)
        faults.append(done)
    while code != 0 and launches < 10:
        proc = start(cmd, log)
        launches += 1
        code = proc.wait()
    text = log.read_text()
    reported = text.count("is damaged") + text.count("cannot read checkpoint") + text.count("holds non-finite")
    expected = sum(how != "deleted" for how in damaged)  # a deleted file is simply not there
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps_ok = [r["step"] for r in metrics if r["kind"] == "step"] == list(range(1, STEPS[kind] + 1))
    equal = code == 0 and steps_ok and same_weights(reference, out)
    return {"kind": kind, "run": index, "faults": faults, "launches": launches, "exit": code, "equal": equal,
            "damaged": damaged, "torn": max(0, reported - expected), "metrics_ok": steps_ok}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=24, help="runs, alternately training and fine-tuning")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/peffnet-faults"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    rng = random.Random(args.seed)
    t0 = time.monotonic()

    references = {"train": args.out / "reference-train", "finetune": args.out / "reference-finetune"}
    for kind in ("train", "finetune"):
        ref, log = references[kind], args.out / f"{references[kind].name}.log"
        if start(command(kind, ref, references["train"]), log).wait() != 0:
            raise SystemExit(f"the uninterrupted {kind} run failed: see {log}")

    results = []
    for i in range(args.runs):
        kind = ("train", "finetune")[i % 2]
        r = one_run(kind, i, args.out / f"{kind}-{i:02d}", references[kind], references["train"], rng)
        results.append(r)
        print(f"{kind:8s} #{i:02d}: {'; '.join(r['faults']) or 'no fault landed'} -> {r['launches']} launches, "
              f"{'bitwise equal' if r['equal'] else 'DIFFERENT'}{', TORN' if r['torn'] else ''}", flush=True)

    faults = [f for r in results for f in r["faults"]]
    kills, in_write = sum(f.startswith("SIGKILL") for f in faults), sum("during a checkpoint" in f for f in faults)
    trains = sum(r["kind"] == "train" for r in results)
    summary = (f"{sum(r['equal'] for r in results)}/{len(results)} bitwise equal ({trains} train, "
               f"{len(results) - trains} finetune); {len(faults)} faults: {kills} SIGKILL ({in_write} during a "
               f"checkpoint write), {sum(f.startswith('SIGTERM') for f in faults)} SIGTERM, "
               f"{sum(len(r['damaged']) for r in results)} damaged checkpoints; torn checkpoints: "
               f"{sum(r['torn'] for r in results)}; {sum(r['launches'] for r in results)} launches, "
               f"{time.monotonic() - t0:.0f} s")
    print(summary)
    (args.out / "results.json").write_text(json.dumps({"summary": summary, "runs": results}, indent=1) + "\n")
    return 0 if all(r["equal"] and not r["torn"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
