"""Images per CPU second of the image pipeline against timm's transforms, per core (docs/data.md).

    python benchmarks/bench_pipeline.py                  # makes the photo folder and shards if missing, ~3 min
    python benchmarks/bench_pipeline.py --folder /data/photos --shards /data/photos-shards --rounds 9

One process, one thread, on the same randomly chosen training files; each round times every pipeline on them
in rotating order (process CPU time: what a core spends, whatever else runs on the machine), and the figures
are medians over rounds; a ratio is the median of the per-round ratios to timm's training transform:

* ``timm``: ``timm.data.create_transform(r, is_training=True)`` on ``Image.open(path).convert("RGB")`` (its
  default adds a colour jitter of 0.4 to the random-resized crop and flip);
* ``timm, no jitter``: the same with ``color_jitter=None``: exactly the paper's augmentation, as ours;
* ``peffnet folder``: ``peffnet train``'s pipeline on the image folder -- a worker's work (read, plan, decode at
  a DCT scale, resize, batch) plus the training process's (scale and normalize on the CPU);
* ``peffnet shards --max-side M``: the same on shards packed with ``peffnet data pack --max-side M`` (each M of
  ``--max-side``; 128 is B0's half-resolution training size here);
* validation: timm's ``create_transform(r)`` (resize to r / 0.875, centre crop) against ours.

Results: ``benchmarks/results/pipeline_cpu.json`` and ``.md`` (``--name`` changes the file names).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import pstats  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
if (HERE.parent / "src" / "peffnet").is_dir():
    sys.path.insert(0, str(HERE.parent / "src"))

import timm  # noqa: E402
import timm.data  # noqa: E402
from PIL import Image  # noqa: E402

from peffnet.data import build_dataset  # noqa: E402
from peffnet.data.decode import dct_scale, open_image  # noqa: E402
from peffnet.data.images import finish  # noqa: E402
from peffnet.data.photos import write_photo_folder  # noqa: E402
from peffnet.data.shards import pack  # noqa: E402
from peffnet.measure.device import device_name  # noqa: E402

CPU = torch.device("cpu")


def timm_pipeline(transform: Callable, files: list[str]) -> Callable[[], None]:
    def run() -> None:
        images = []
        for path in files:
            with Image.open(path) as image:
                images.append(transform(image.convert("RGB")))
        torch.stack(images)  # the DataLoader's collation
    return run


def peffnet_pipeline(spec: str, resolution: int, train: bool, picks: list[int]) -> Callable[[], None]:
    dataset = build_dataset(spec, "train", resolution, train)
    state = {"epoch": 0}

    def run() -> None:
        state["epoch"] += 1  # new random crops every round, as a new epoch
        batch = dataset.batch([(i, state["epoch"], 0) for i in picks], dataset.preprocessing)
        finish(batch, CPU, dataset.preprocessing)
    return run


def upscaled(spec: str, resolution: int, epochs: int = 4) -> dict[str, float]:
    """How the training boxes of ``spec`` compare with the output size: the share of boxes whose shorter side,
    in stored pixels, is below ``resolution`` (they are enlarged: detail the original file had is lost when
    the stored image was made smaller), and the median enlargement of those."""
    dataset = build_dataset(spec, "train", resolution, True)
    factors = []
    for epoch in range(epochs):
        for i in range(len(dataset)):
            with open_image(io.BytesIO(dataset.source.read(i))) as image:
                plan = dataset.plan(image.width, image.height, i, epoch, 0)
            factors.append(resolution / min(plan.width, plan.height))
    enlarged = [f for f in factors if f > 1]
    return {"enlarged_share": len(enlarged) / len(factors),
            "median_enlargement": statistics.median(enlarged) if enlarged else 1.0}


def profile(run: Callable[[], None], images: int) -> dict[str, float]:
    """Where one round of a pipeline spends its time: milliseconds per image in each of the functions that take
    most of it (cProfile's own time; Pillow's C decoder and resampler appear as ``decode`` and ``resize``)."""
    profiler = cProfile.Profile(time.process_time)  # CPU time, as the rates
    profiler.runcall(run)
    stats = pstats.Stats(profiler).stats
    own = {f"{Path(file).name}:{name}" if file != "~" else name.strip("<>").split(" of ")[0]: v[2]
           for (file, _, name), v in stats.items()}
    top = sorted(own.items(), key=lambda kv: -kv[1])[:6]
    return {**{name: 1000 * t / images for name, t in top}, "total": 1000 * sum(own.values()) / images}


def decode_scales(files: list[str]) -> dict[str, float]:
    """Milliseconds per CPU second of a whole-file decode at DCT scale 1, 2, 4 and 8 (Pillow's draft): what a
    smaller scale saves, and what it cannot (entropy decoding reads the whole file at any scale)."""
    out = {}
    for s in (1, 2, 4, 8):
        start = time.process_time()
        for path in files:
            with Image.open(path) as image:
                if s > 1:
                    image.draft("RGB", (image.width // s, image.height // s))
                image.load()
        out[f"1/{s}"] = 1000 * (time.process_time() - start) / len(files)
    return out


def same_files(shards: Path, folder: Path, files: list[str]) -> list[int]:
    """The shard indices of ``files`` (paths in ``folder``), from the shards' ``train-files.txt``."""
    packed = {name: i for i, name in enumerate((shards / "train-files.txt").read_text().splitlines())}
    return [packed[str(Path(f).relative_to(folder))] for f in files]


def measure(pipelines: dict[str, Callable[[], None]], rounds: int, images: int) -> dict[str, list[float]]:
    """Images per CPU second of each pipeline per round, in rotating order, after one warm-up round."""
    names = list(pipelines)
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds + 1):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            start = time.process_time()
            pipelines[name]()
            if r:
                rates[name].append(images / (time.process_time() - start))
    return rates


def summarize(rates: dict[str, list[float]], reference: str) -> dict[str, dict[str, float]]:
    out = {}
    for name, values in rates.items():
        ratios = [v / ref for v, ref in zip(values, rates[reference], strict=True)]
        out[name] = {"img_per_cpu_s": statistics.median(values), "ratio": statistics.median(ratios),
                     "ratio_min": min(ratios), "ratio_max": max(ratios), "rounds": len(values)}
    return out


def ensure_data(folder: Path, shards: dict[int, Path]) -> None:
    if not (folder / "train").is_dir():
        print(f"making the photo folder {folder} (2500 JPEGs) ...", file=sys.stderr)
        write_photo_folder(folder, workers=os.cpu_count() or 1)
    for max_side, path in shards.items():
        if not (path / "index.json").is_file():
            print(f"packing {folder} into {path} at --max-side {max_side} ...", file=sys.stderr)
            pack(folder, path, max_side=max_side, workers=os.cpu_count() or 1)


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/peffnet-photos"),
                        help="photo folder (made with peffnet.data.photos if missing)")
    parser.add_argument("--max-side", type=int, nargs="+", default=[128, 256],
                        help="--max-side of the shards, FOLDER-shards-MAXSIDE (packed if missing)")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--images", type=int, default=100, help="images per pipeline and round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--name", default="pipeline_cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    shards = {m: args.folder.with_name(f"{args.folder.name}-shards-{m}") for m in args.max_side}
    ensure_data(args.folder, shards)
    load_before = os.getloadavg()[0]
    rows = []
    for r in args.resolutions:
        train = build_dataset(f"imagefolder:{args.folder}", "train", r, True)
        picks = torch.randperm(len(train), generator=torch.Generator().manual_seed(r))[:args.images].tolist()
        files = [train.source.name(i) for i in picks]
        pipelines = {
            "timm": timm_pipeline(timm.data.create_transform(r, is_training=True), files),
            "timm, no jitter": timm_pipeline(timm.data.create_transform(r, is_training=True, color_jitter=None),
                                             files),
            "peffnet folder": peffnet_pipeline(f"imagefolder:{args.folder}", r, True, picks),
            **{f"peffnet shards --max-side {m}": peffnet_pipeline(f"shards:{path}", r, True,
                                                                   same_files(path, args.folder, files))
               for m, path in shards.items()},
            "timm validation": timm_pipeline(timm.data.create_transform(r), files),
            "peffnet folder validation": peffnet_pipeline(f"imagefolder:{args.folder}", r, False, picks),
        }
        rates = measure(pipelines, args.rounds, len(picks))
        result = summarize({k: v for k, v in rates.items() if "validation" not in k}, "timm")
        val = summarize({k: v for k, v in rates.items() if "validation" in k}, "timm validation")
        crops = {"peffnet folder": upscaled(f"imagefolder:{args.folder}", r),
                 **{f"peffnet shards --max-side {m}": upscaled(f"shards:{path}", r) for m, path in shards.items()}}
        scales = [dct_scale(plan, r) for plan in (train.plan(*open_image(f).size, i, 1, 0) for i, f in zip(picks, files,
                                                                                                         strict=True))]
        steps = {"profile_ms_per_image": profile(pipelines["peffnet folder"], len(picks)),
                 "dct_scale_share": {f"1/{s}": scales.count(s) / len(scales) for s in (1, 2, 4, 8)},
                 "whole_decode_ms": decode_scales(files[:40])}
        rows.append({"resolution": r, "train": result, "validation": val, "crops": crops, "steps": steps})
        print(f"{r} px: " + ", ".join(f"{k} {v['img_per_cpu_s']:.0f} ({v['ratio']:.2f}x)" for k, v in result.items()),
              file=sys.stderr)
    command = "python benchmarks/bench_pipeline.py " + " ".join(sys.argv[1:])
    env = {"cpu": device_name(CPU), "torch": torch.__version__, "timm": timm.__version__,
           "pillow": Image.__version__, "python": platform.python_version(), "commit": commit(),
           "load_average_before": load_before, "load_average_after": os.getloadavg()[0], "command": command.strip()}
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps({"environment": env, "results": rows}, indent=1) + "\n")
    lines = ["# Image pipeline per core: peffnet vs timm", "",
             f"`{env['command']}` on {env['cpu']} (torch {env['torch']}, timm {env['timm']}, Pillow {env['pillow']}, "
             f"commit {env['commit']}; load average {load_before:.1f} before, {env['load_average_after']:.1f} "
             f"after). Images per CPU second of one process (one thread), medians of {args.rounds} rounds of "
             f"{args.images} images; ratio: median of per-round ratios to timm's training transform (min-max).", "",
             "Crops enlarged: the share of training boxes (4 epochs of every image) whose shorter side, in stored "
             "pixels, is below the resolution, and their median enlargement.", "",
             "| resolution | pipeline | img per CPU s | ratio to timm | crops enlarged |", "|---|---|---|---|---|"]
    for row in rows:
        for name, v in row["train"].items():
            crop = row["crops"].get(name)
            enlarged = f"{100 * crop['enlarged_share']:.0f} % ({crop['median_enlargement']:.2f}x)" if crop else ""
            lines.append(f"| {row['resolution']} | {name} | {v['img_per_cpu_s']:.0f} | {v['ratio']:.2f}x "
                         f"({v['ratio_min']:.2f}-{v['ratio_max']:.2f}) | {enlarged} |")
        for name, v in row["validation"].items():
            lines.append(f"| {row['resolution']} | {name} | {v['img_per_cpu_s']:.0f} | {v['ratio']:.2f}x of timm's "
                         f"validation ({v['ratio_min']:.2f}-{v['ratio_max']:.2f}) | |")
    lines += ["", "Where the folder pipeline's time goes (cProfile, ms per image), the DCT scales its boxes allow, and "
                  "what a whole-file decode costs per scale (ms per image):", ""]
    for row in rows:
        st = row["steps"]
        lines.append(f"- {row['resolution']} px: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                              st["profile_ms_per_image"].items())
                     + "; scales " + ", ".join(f"{k} {100 * v:.0f} %" for k, v in st["dct_scale_share"].items())
                     + "; whole decode " + ", ".join(f"{k} {v:.2f}" for k, v in st["whole_decode_ms"].items()))
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
