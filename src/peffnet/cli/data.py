"""``peffnet data``: pack an image folder into tar shards (``pack``), and measure whether the input pipeline keeps
up with the model (``bench``); docs/data.md."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from peffnet.settings import INT, POSITIVE, Settings, setting


@dataclass
class PackCommand(Settings):
    data: str = setting("", "the image folder to pack: imagefolder:PATH (train/CLASS/*, val/CLASS/*)",
                        positional=True, required=True)
    out: str = setting("", "directory to write the shards and their index into (must not hold shards yet)",
                       required=True)
    max_side: int | None = setting(None, "store images at most this many pixels on their longest side "
                                         "(re-encoded as JPEG; default: the files as they are)", INT, POSITIVE)
    quality: int = setting(90, "JPEG quality of re-encoded images", INT, POSITIVE)
    shard_size: int = setting(256, "shard size in MiB (a shard is closed once it passes this)", INT, POSITIVE)
    workers: int = setting(1, "processes reading and re-encoding", INT, POSITIVE)
    max_image_pixels: int | None = setting(None, "image files with more pixels are left out unread (default: "
                                                 "PIL's Image.MAX_IMAGE_PIXELS)", INT, POSITIVE)


def register(sub: argparse._SubParsersAction) -> None:
    from peffnet.measure.loader import DataBenchOptions

    p = sub.add_parser("data", help="pack image folders into shards; does the input pipeline keep up?",
                       description="Datasets of encoded images: `pack` writes an image folder as WebDataset-style "
                                   "tar shards with an index (train from them with --data shards:DIR); `bench` "
                                   "measures the loader's img/s per worker against the model's training img/s.")
    commands = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", parser_class=type(p))
    commands.required = True
    pack = commands.add_parser("pack", help="write an image folder as tar shards (docs/formats.md, Shards)",
                               description="Pack imagefolder:PATH (train/ and val/) into tar shards in the "
                                           "WebDataset layout plus an index for random access. Every file is "
                                           "decoded once; unreadable ones are left out and listed.")
    PackCommand.add_arguments(pack)
    pack.set_defaults(func=run_pack)
    bench = commands.add_parser("bench", help="loader img/s per worker vs model training img/s",
                                description="For each resolution: the images one loader worker prepares per CPU "
                                            "second, the model's training img/s, and how many workers keep up.")
    DataBenchOptions.add_arguments(bench)
    bench.add_argument("--out", metavar="FILE.json", help="also write the record as JSON")
    bench.set_defaults(func=run_bench)


def run_pack(args: argparse.Namespace) -> int:
    from peffnet.data.datasets import parse_spec
    from peffnet.data.shards import pack
    from peffnet.errors import ConfigError

    c = PackCommand.from_args(args)
    kind, path = parse_spec(c.data)
    if kind != "imagefolder":
        raise ConfigError(f"data pack reads an image folder (imagefolder:PATH), not {c.data!r}")
    if not 1 <= c.quality <= 100:
        raise ConfigError(f"quality must be in 1-100, got {c.quality}")
    meta = pack(Path(path), Path(c.out), c.max_side, c.quality, c.shard_size << 20, c.workers, c.max_image_pixels)
    for split, entry in meta["splits"].items():
        print(f"{split}: {entry['samples']} images in {len(entry['shards'])} shard(s), "
              f"{sum(s['bytes'] for s in entry['shards']) / 2**20:.1f} MiB")
        if entry["left_out"]:
            print(f"peffnet data pack: left out {len(entry['left_out'])} unreadable {split} file(s):", file=sys.stderr)
            for item in entry["left_out"]:
                print(f"  {item['path']}: {item['reason']}", file=sys.stderr)
    print(f"wrote {c.out}/index.json; train from it with --data shards:{c.out}")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from peffnet.files import write_file
    from peffnet.measure.loader import DataBenchOptions, format_loader, measure_loader

    opts = DataBenchOptions.from_args(args)
    record = measure_loader(opts)
    record["command"] = opts.command_line("data").replace("peffnet data", "peffnet data bench", 1)
    if args.out:
        write_file(args.out, json.dumps(record, indent=1) + "\n")
    print(format_loader(record))
    return 0
