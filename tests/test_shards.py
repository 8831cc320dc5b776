"""Tar shards: ``peffnet data pack`` writes WebDataset-layout shards with an index; ``--data shards:DIR`` reads
them with random access, split over ranks, resumable, the same as the folder; bad files and damaged shards."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import documented_keys
from peffnet.cli import main
from peffnet.data import build_dataset, make_loader
from peffnet.data.shards import pack
from peffnet.errors import ConfigError
from test_pipeline import photo_folder
from train_helpers import make_image_folder, tiny_args


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small photo folder (JPEGs) and its shards, packed at the files' own size in shards of ~200 KB."""
    root = tmp_path_factory.mktemp("shards")
    folder = photo_folder(root / "photos", classes=3, train=4, val=2)
    pack(folder, root / "shards", shard_bytes=200_000)
    return folder, root / "shards"


def test_shards_are_webdataset_tars_with_an_index(packed: tuple[Path, Path]) -> None:
    folder, shards = packed
    meta = json.loads((shards / "index.json").read_text())
    assert set(meta) == documented_keys("Shards: `index.json`")
    assert meta["format"] == "peffnet-shards-v1" and meta["classes"] == ["c0", "c1", "c2"]
    train = meta["splits"]["train"]
    assert train["samples"] == 12 and len(train["shards"]) > 1 and train["left_out"] == []
    files = (shards / "train-files.txt").read_text().splitlines()
    assert sorted(files) == sorted(str(p.relative_to(folder)) for p in (folder / "train").rglob("*.jpg"))
    table = np.load(shards / "train-index.npy")
    members = {}
    for shard in train["shards"]:
        with tarfile.open(shards / shard["file"]) as tar:  # plain tar: the standard library reads it
            assert len(tar.getmembers()) == 2 * shard["samples"]
            members.update({m.name: (shard["file"], m.offset_data, m.size, tar.extractfile(m).read())
                            for m in tar.getmembers()})
    for row, (shard_no, offset, size, label) in enumerate(table.tolist()):
        key = f"{row:08d}"
        name, data_offset, data_size, data = members[f"{key}.jpg"]
        assert (name, data_offset, data_size) == (train["shards"][shard_no]["file"], offset, size)
        assert members[f"{key}.cls"][3] == str(label).encode()  # WebDataset's class member: the label as text
        assert data == (folder / files[row]).read_bytes()  # stored as they were
        assert meta["classes"][label] == Path(files[row]).parent.name


def test_shards_give_the_images_the_folder_gives(packed: tuple[Path, Path]) -> None:
    folder, shards = packed
    from_shards = build_dataset(f"shards:{shards}", "val", 64, False)
    from_folder = build_dataset(f"imagefolder:{folder}", "val", 64, False)
    names = [from_folder.source.name(i) for i in range(len(from_folder))]
    files = (shards / "val-files.txt").read_text().splitlines()
    assert from_shards.classes == from_folder.classes and len(from_shards) == len(from_folder) == 6
    for i, file in enumerate(files):
        j = names.index(str(folder / file))
        x, y = from_shards[i]
        assert torch.equal(x, from_folder[j][0]) and y == from_folder[j][1]


def test_shards_split_over_ranks_once_per_epoch_and_resume_mid_epoch(packed: tuple[Path, Path]) -> None:
    """Each rank reads its own share; over the ranks every sample once per epoch; the global batch of a step is
    the same for 1 and 2 processes (so are the images: augmentation depends on seed, epoch and index); a
    loader set to a later step gives the rest of the epoch."""
    _, shards = packed
    dataset = build_dataset(f"shards:{shards}", "train", 32, True)
    single = make_loader(dataset, 4, train=True, seed=5, workers=0)
    single.set_epoch(2)
    whole = list(single)
    ranks = [make_loader(dataset, 4, train=True, seed=5, rank=r, world_size=2, workers=1) for r in range(2)]
    seen = []
    for r in ranks:
        r.set_epoch(2)
        seen += [i for b in r.index_batches() for i in b.tolist()]
    assert sorted(seen) == list(range(len(dataset)))
    parts = [list(r) for r in ranks]
    for step, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([parts[0][step][0], parts[1][step][0]]), x)
        assert torch.equal(torch.cat([parts[0][step][1], parts[1][step][1]]), y)
    single.set_epoch(2, start_step=1)
    rest = list(single)
    assert len(rest) == 2 and all(torch.equal(a[0], b[0]) for a, b in zip(rest, whole[1:], strict=True))


def test_max_side_stores_smaller_images(tmp_path: Path) -> None:
    folder = photo_folder(tmp_path / "photos", classes=2, train=2, val=1)
    Image.new("RGB", (40, 30), (10, 200, 30)).save(folder / "train" / "c0" / "small.png")
    meta = pack(folder, tmp_path / "shards", max_side=96, quality=85)
    assert (meta["max_side"], meta["quality"]) == (96, 85)
    dataset = build_dataset(f"shards:{tmp_path / 'shards'}", "train", 32, True)
    sizes = {}
    for i in range(len(dataset)):
        with Image.open(io.BytesIO(dataset.source.read(i))) as image:
            sizes[image.format] = sizes.get(image.format, []) + [image.size]
    assert sizes["PNG"] == [(40, 30)]  # no larger than the limit: kept as it was
    assert len(sizes["JPEG"]) == 4 and all(max(s) == 96 for s in sizes["JPEG"])


def odd_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """Files that are read (CMYK JPEG, 16-bit PNG, palette GIF) and files that are not (truncated JPEG, a text
    file, an empty PNG, a PNG over the pixel limit)."""
    readable = [folder / "cmyk.jpg", folder / "deep.png", folder / "palette.gif"]
    Image.new("CMYK", (50, 40), (0, 0, 0, 0)).save(readable[0])
    Image.fromarray(np.full((40, 50), 40000, np.uint16)).save(readable[1])
    palette = Image.new("P", (50, 40), 0)
    palette.putpalette([200, 100, 50] * 256)
    palette.save(readable[2])
    jpeg = folder / "truncated.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(jpeg, quality=90)
    jpeg.write_bytes(jpeg.read_bytes()[:200])
    (folder / "text.jpg").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    Image.new("1", (100, 100)).save(folder / "huge.png")  # 10 000 pixels: over the tests' limit of 5 000
    return readable, [jpeg, folder / "text.jpg", folder / "empty.png", folder / "huge.png"]


def test_pack_leaves_unreadable_files_out_and_lists_them(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = make_image_folder(tmp_path / "data", {"a": 3, "b": 3}, size=24)
    readable, unreadable = odd_files(folder / "train" / "a")
    out = tmp_path / "shards"
    assert main(["data", "pack", f"imagefolder:{folder}", "--out", str(out), "--max-image-pixels", "5000"]) == 0
    stdout, stderr = capsys.readouterr()
    assert "Traceback" not in stderr and f"left out {len(unreadable)} unreadable train file(s)" in stderr
    assert all(str(p) in stderr for p in unreadable)
    meta = json.loads((out / "index.json").read_text())
    assert sorted(x["path"] for x in meta["splits"]["train"]["left_out"]) == sorted(map(str, unreadable))
    assert meta["splits"]["train"]["samples"] == 6 + len(readable) and "train: 9 images" in stdout
    dataset = build_dataset(f"shards:{out}", "train", 32, False)
    names = (out / "train-files.txt").read_text().splitlines()
    for path, colour in zip(readable, [(255, 255, 255), (156, 156, 156), (200, 100, 50)], strict=True):
        x, _ = dataset[names.index(str(path.relative_to(folder)))]
        rgb = x * torch.tensor(dataset.preprocessing.std).view(3, 1, 1) + torch.tensor(
            dataset.preprocessing.mean).view(3, 1, 1)
        assert (rgb[:, 16, 16] * 255 - torch.tensor(colour)).abs().max() < 2, path.name


def test_odd_and_bad_files_in_a_folder_are_converted_or_skipped_and_reported(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "data", {"a": 3, "b": 3}, size=24)
    readable, unreadable = odd_files(folder / "train" / "a")
    dataset = build_dataset(f"imagefolder:{folder}", "train", 32, True, max_pixels=5000)
    for decode in ("cpu", "device"):
        loader = make_loader(dataset, len(dataset), train=True, workers=0, decode=decode)
        loader.set_epoch(0)
        (images, labels), = list(loader)
        assert images.shape == (13, 3, 32, 32) and torch.isfinite(images).all()
        assert sorted(loader.skipped) == sorted(map(str, unreadable)), decode
        assert loader.oversized == [str(folder / "train" / "a" / "huge.png")]


def test_a_missing_or_damaged_shard_is_one_line_naming_it(packed: tuple[Path, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    _, shards = packed
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in shards.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    first = copy / "train-000000.tar"
    data = first.read_bytes()
    first.write_bytes(data[:-1024])
    with pytest.raises(ConfigError, match=f"^shard {first} is damaged: .* bytes, index.json records") as err:
        build_dataset(f"shards:{copy}", "train", 32, True)
    assert "\n" not in str(err.value)
    first.write_bytes(b"\xff" * 100 + data[100:])  # same size, the first member's name overwritten
    dataset = build_dataset(f"shards:{copy}", "train", 32, True)
    with pytest.raises(ConfigError, match=f"^shard {first} is damaged: sample 00000000 is not at byte"):
        dataset.sample(0)
    loader = make_loader(dataset, 12, train=True, workers=1)
    with pytest.raises(ConfigError, match=f"^shard {first} is damaged") as err:
        list(loader)
    assert "\n" not in str(err.value)
    first.unlink()
    samples = json.loads((copy / "index.json").read_text())["splits"]["train"]["shards"][0]["samples"]
    assert main(tiny_args(tmp_path / "run", "--data", f"shards:{copy}", "--batch-size", "4")) == 2
    _, stderr = capsys.readouterr()
    assert stderr == f"peffnet train: error: shard {first} is missing ({samples} samples of train)\n"
    for bad, message in [(tmp_path / "nowhere", "does not exist"), (tmp_path, "holds no shards: no index.json")]:
        with pytest.raises(ConfigError, match=message):
            build_dataset(f"shards:{bad}", "train", 32, True)


def test_a_corrupt_sample_in_a_shard_is_skipped_and_reported(packed: tuple[Path, Path], tmp_path: Path) -> None:
    _, shards = packed
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in shards.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    shard, offset, size, _ = np.load(copy / "train-index.npy")[5].tolist()
    path = copy / json.loads((copy / "index.json").read_text())["splits"]["train"]["shards"][shard]["file"]
    data = bytearray(path.read_bytes())
    data[offset + 600:offset + size] = bytes(size - 600)  # the header reads, the image data is gone
    path.write_bytes(bytes(data))
    dataset = build_dataset(f"shards:{copy}", "train", 32, True)
    loader = make_loader(dataset, 12, train=True, workers=0)
    (images, _), = list(loader)
    assert images.shape == (12, 3, 32, 32) and loader.skipped == [f"{path}:00000005"]


@pytest.mark.slow  # three commands end to end
def test_train_finetune_and_eval_read_shards(packed: tuple[Path, Path], tmp_path: Path) -> None:
    _, shards = packed
    out = tmp_path / "run"
    assert main(tiny_args(out, "--data", f"shards:{shards}", "--batch-size", "4", "--workers", "1")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["dataset"], summary["num_classes"], summary["steps"]) == (f"shards:{shards}", 3, 3)
    assert main(["finetune", str(out), "--resolution", "64", "--stages", "1", "--epochs", "1", "--batch-size", "4",
                 "--workers", "0", "--no-progress", "--out", str(tmp_path / "ft")]) == 0
    assert json.loads((tmp_path / "ft" / "summary.json").read_text())["dataset"] == f"shards:{shards}"
    assert main(["eval", str(out), "--resolutions", "32,64", "--no-progress"]) == 0
    record = json.loads((out / "eval.json").read_text())
    assert [r["images"] for r in record["results"]] == [6, 6]
