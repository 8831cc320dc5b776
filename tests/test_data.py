"""Datasets and loaders: specs, Fashion-MNIST, augmentation reproducibility, sharding, image folders."""

from __future__ import annotations

import multiprocessing
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from peffnet.data import (
    FASHION_MNIST_DIR,
    TensorImageDataset,
    build_dataset,
    default_resolution,
    make_loader,
    parse_spec,
)
from peffnet.data.datasets import hash_uniform
from peffnet.data.decode import load_rgb
from peffnet.data.imagefolder import image_folder as ImageFolderDataset
from peffnet.errors import ConfigError
from train_helpers import make_image_folder

HAVE_FASHION = Path(FASHION_MNIST_DIR).is_dir()
needs_fashion = pytest.mark.skipif(not HAVE_FASHION, reason="Fashion-MNIST not installed")


def test_specs() -> None:
    assert parse_spec("fashion-mnist") == ("fashion-mnist", None)
    assert parse_spec("imagefolder:/data/x") == ("imagefolder", "/data/x")
    assert default_resolution("synthetic") == 32 and default_resolution("imagefolder:x") is None
    for bad in ("", "mnist", "imagefolder:", "synthetic:3"):
        with pytest.raises(ConfigError):
            parse_spec(bad)


@needs_fashion
def test_fashion_mnist_shapes_and_centred_validation_image() -> None:
    val = build_dataset("fashion-mnist", "val", 32, False)
    assert (len(val), val.num_classes, val.in_chans) == (10_000, 10, 1)
    x, y = val.get_batch(torch.arange(4), epoch=0, seed=0)
    assert x.shape == (4, 1, 32, 32) and y.tolist() == val.labels[:4].tolist()
    raw = val.images[:4].float() / 255
    # validation: the 28x28 image sits unchanged in the middle of the 32x32 canvas
    torch.testing.assert_close(x[..., 2:30, 2:30] * val.std + val.mean, raw, atol=1e-5, rtol=0)
    assert torch.allclose(x[..., :2, :] * val.std + val.mean, torch.zeros(()), atol=1e-6)
    big = build_dataset("fashion-mnist", "val", 64, False, subset=3)
    assert big.get_batch(torch.arange(3), 0, 0)[0].shape == (3, 1, 64, 64)


@needs_fashion
def test_bad_fashion_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        build_dataset("fashion-mnist", "train", 32, True, data_dir=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="not found"):
        build_dataset("fashion-mnist", "train", 32, True, data_dir=str(tmp_path))
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x02\x01\x02")
    with pytest.raises(ConfigError, match="cannot read Fashion-MNIST"):
        build_dataset("fashion-mnist", "train", 32, True, data_dir=str(tmp_path))


def synthetic_train(resolution: int = 32) -> TensorImageDataset:
    return build_dataset("synthetic", "train", resolution, True, subset=64)


def test_augmentation_depends_on_image_not_batch() -> None:
    ds = synthetic_train()
    idx = torch.tensor([5, 9, 3, 40])
    batch, _ = ds.get_batch(idx, epoch=2, seed=7)
    for row, i in enumerate(idx.tolist()):
        alone, _ = ds.get_batch(torch.tensor([i]), epoch=2, seed=7)
        torch.testing.assert_close(batch[row], alone[0], rtol=0, atol=0)
    other_epoch, _ = ds.get_batch(idx, epoch=3, seed=7)
    other_seed, _ = ds.get_batch(idx, epoch=2, seed=8)
    assert not torch.equal(batch, other_epoch) and not torch.equal(batch, other_seed)


def test_augmentation_is_translation_and_flip() -> None:
    ds = synthetic_train()
    i = torch.tensor([11])
    out, _ = ds.get_batch(i, epoch=0, seed=0)
    padded = torch.nn.functional.pad(ds.images[i].float() / 255, (4,) * 4)
    candidates = [padded[..., dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
    candidates += [c.flip(-1) for c in candidates]
    restored = out * ds.std + ds.mean
    assert min((restored - c).abs().max().item() for c in candidates) < 1e-5


@pytest.mark.parametrize("translate", [0, 2])
def test_translate_bounds_the_shift(translate: int) -> None:
    ds = build_dataset("synthetic", "train", 32, True, translate=translate)
    out, _ = ds.get_batch(torch.arange(64), epoch=0, seed=0)
    restored = out * ds.std + ds.mean
    images = ds.images[:64].float() / 255
    padded = torch.nn.functional.pad(images, (translate,) * 4)
    shifts = [(dy, dx) for dy in range(2 * translate + 1) for dx in range(2 * translate + 1)]
    views = [padded[..., dy:dy + 32, dx:dx + 32] for dy, dx in shifts]
    errors = torch.stack([torch.minimum((restored - v).abs().amax((1, 2, 3)),
                                        (restored - v.flip(-1)).abs().amax((1, 2, 3))) for v in views])
    assert errors.min(0).values.max() < 1e-5  # every image is one of the allowed shifts (and maybe flipped)
    if translate:  # and larger shifts than 0 are used
        assert (errors[shifts.index((translate, translate))] > 1e-5).any()


def test_hash_uniform_is_uniform_and_decorrelated() -> None:
    u = hash_uniform(0, 0, torch.arange(100_000), 1)
    assert u.min() >= 0 and u.max() < 1
    counts = torch.histc(u, bins=10, min=0, max=1)
    assert (counts - 10_000).abs().max() < 500  # ~5 sigma of a binomial count
    v = hash_uniform(0, 0, torch.arange(100_000), 2)
    assert abs(torch.corrcoef(torch.stack([u, v]))[0, 1]) < 0.02


def test_loader_shards_global_batches_and_resumes_mid_epoch() -> None:
    ds = synthetic_train()
    single = make_loader(ds, 16, train=True, seed=3)
    single.set_epoch(1)
    full = single.index_batches()
    assert len(single) == 4 and all(len(b) == 16 for b in full)
    ranks = [make_loader(ds, 16, train=True, seed=3, rank=r, world_size=2) for r in range(2)]
    for r in ranks:
        r.set_epoch(1)
    for step, (a, b) in enumerate(zip(*(r.index_batches() for r in ranks), strict=True)):
        assert torch.equal(torch.cat([a, b]), full[step])
    single.set_epoch(1, start_step=2)
    assert [b.tolist() for b in single.index_batches()] == [b.tolist() for b in full[2:]]
    single.set_epoch(2)
    assert not torch.equal(single.index_batches()[0], full[0])  # a new order every epoch


def test_eval_loader_covers_every_image_once() -> None:
    ds = build_dataset("synthetic", "val", 32, False, subset=37)
    seen = []
    for r in range(3):
        loader = make_loader(ds, 5, train=False, rank=r, world_size=3)
        seen += [i for b in loader.index_batches() for i in b.tolist()]
        assert sum(len(y) for _, y in loader) == len(range(r, 37, 3))
    assert sorted(seen) == list(range(37))


def test_loader_errors() -> None:
    ds = synthetic_train()
    with pytest.raises(ConfigError, match="fewer than one global batch"):
        make_loader(ds, 128, train=True)
    with pytest.raises(ConfigError, match="not divisible"):
        make_loader(ds, 15, train=True, world_size=2)


# ------------------------------------------------------------------ image folders


def test_image_folder_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing", "train", 32, True)
    with pytest.raises(ConfigError, match="has no train/ folder"):
        ImageFolderDataset(tmp_path, "train", 32, True)
    (tmp_path / "train").mkdir()
    with pytest.raises(ConfigError, match="has no class folders"):
        ImageFolderDataset(tmp_path, "train", 32, True)
    make_image_folder(tmp_path, {"cat": 2}, splits=("train",))
    (tmp_path / "train" / "dog").mkdir()
    (tmp_path / "train" / "dog" / "notes.txt").write_text("no images here")
    with pytest.raises(ConfigError, match="class folder .*dog has no images"):
        ImageFolderDataset(tmp_path, "train", 32, True)
    (tmp_path / "train" / "dog" / "notes.txt").unlink()
    make_image_folder(tmp_path, {"dog": 1}, splits=("train",))
    make_image_folder(tmp_path, {"bird": 1}, splits=("val",))
    with pytest.raises(ConfigError, match="'bird' that train/ does not have"):
        ImageFolderDataset(tmp_path, "val", 32, False)


def test_odd_image_modes_become_proper_rgb(tmp_path: Path) -> None:
    grey = Image.fromarray(np.full((8, 8), 77, np.uint8), "L")
    cmyk = Image.new("CMYK", (8, 8), (0, 0, 0, 0))  # no ink: white
    rgba = Image.new("RGBA", (8, 8), (10, 20, 30, 0))  # fully transparent: the white background
    half = Image.new("RGBA", (8, 8), (0, 0, 0, 128))  # half-transparent black over white
    deep = Image.fromarray(np.full((8, 8), 65535, np.uint16))  # 16-bit white (mode I;16)
    mid = Image.fromarray(np.full((8, 8), 32896, np.uint16))
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([200, 100, 50] * 256)
    cases = {"grey.png": (grey, (77, 77, 77)), "cmyk.jpg": (cmyk, (255, 255, 255)),
             "rgba.png": (rgba, (255, 255, 255)), "half.png": (half, (127, 127, 127)),
             "deep.png": (deep, (255, 255, 255)), "mid.tif": (mid, (128, 128, 128)),
             "palette.gif": (palette, (200, 100, 50))}
    for name, (image, expected) in cases.items():
        image.save(tmp_path / name)
        rgb = load_rgb(tmp_path / name)
        assert rgb.mode == "RGB", name
        assert np.abs(np.asarray(rgb, np.int32)[4, 4] - np.array(expected)).max() <= 2, name


def write_bad_files(folder: Path) -> list[Path]:
    """A truncated JPEG, a text file named .jpg and an empty PNG."""
    good = folder / "0.png"
    jpeg = folder / "truncated.jpg"
    Image.open(good).convert("RGB").save(jpeg, quality=90)
    jpeg.write_bytes(jpeg.read_bytes()[:200])
    text = folder / "readme.jpg"
    text.write_text("this is not an image\n")
    empty = folder / "empty.png"
    empty.write_bytes(b"")
    return [jpeg, text, empty]


def test_corrupt_images_are_skipped_and_reported(tmp_path: Path) -> None:
    make_image_folder(tmp_path, {"a": 4, "b": 4})
    bad = write_bad_files(tmp_path / "train" / "a")
    ds = ImageFolderDataset(tmp_path, "train", 32, True)
    assert len(ds) == 11
    loader = make_loader(ds, 11, train=True, workers=0)
    loader.set_epoch(0)
    (images, labels), = list(loader)
    assert images.shape == (11, 3, 32, 32) and labels.shape == (11,)  # batch keeps its size
    assert sorted(loader.skipped) == sorted(str(p) for p in bad)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_folder_of_unreadable_files_is_a_one_line_error(tmp_path: Path, workers: int) -> None:
    make_image_folder(tmp_path, {"a": 1})
    for i in range(40):
        (tmp_path / "train" / "a" / f"bad{i:02d}.jpg").write_text("not an image")
    ds = ImageFolderDataset(tmp_path, "train", 32, True)
    loader = make_loader(ds, 41, train=True, workers=workers)
    with pytest.raises(ConfigError, match="^32 consecutive unreadable images in .*train, starting at") as err:
        list(loader)
    assert "\n" not in str(err.value)


def test_a_class_without_a_readable_image_is_a_one_line_error_naming_it(tmp_path: Path) -> None:
    make_image_folder(tmp_path, {"cat": 2, "dog": 2})
    for path in (tmp_path / "train" / "dog").iterdir():
        path.write_bytes(path.read_bytes()[:60])  # truncated PNGs: the header reads, the pixels do not
    (tmp_path / "train" / "dog" / "notes.jpg").write_text("not an image")
    with pytest.raises(ConfigError, match=r"^class 'dog' has no readable image: none of its 3 file\(s\) in "
                                          rf"{tmp_path / 'train' / 'dog'} decodes \(first: 0.png: ") as err:
        ImageFolderDataset(tmp_path, "train", 32, True)
    assert "\n" not in str(err.value)
    ImageFolderDataset(tmp_path, "val", 32, False)  # the other split is fine


def big_png(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit PNG of ``width`` x ``height`` (a few KB on disk, ``width * height`` pixels decoded)."""
    Image.new("1", (width, height)).save(path)
    return path


def test_images_over_the_pixel_limit_are_skipped_unread_and_counted(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Default limit: PIL's Image.MAX_IMAGE_PIXELS (89.5 M). A 10000 x 10000 PNG (100 M pixels, under PIL's own
    refusal at twice its limit) is skipped without decoding it, and counted."""
    make_image_folder(tmp_path, {"a": 3})
    big = big_png(tmp_path / "train" / "a" / "2big.png", 10_000, 10_000)
    decoded = []
    real_load = ImageFile.ImageFile.load

    def load(self: ImageFile.ImageFile) -> object:
        decoded.append(self.filename)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    ds = ImageFolderDataset(tmp_path, "train", 32, True)
    loader = make_loader(ds, 4, train=True, workers=0)
    loader.set_epoch(0)
    (images, _), = list(loader)
    assert images.shape == (4, 3, 32, 32)
    assert loader.skipped == loader.oversized == [str(big)]
    assert str(big) not in decoded and len(decoded) >= 3  # the others were decoded
    with pytest.raises(ConfigError, match="class 'a' has no readable image: .* 48x40 pixels, more than the limit"):
        ImageFolderDataset(tmp_path, "val", 32, False, max_pixels=100)  # every image over the limit


@pytest.mark.slow  # DataLoader worker processes, three signals
def test_workers_survive_signals_sent_to_every_process_and_end_with_their_loader(tmp_path: Path) -> None:
    """Ctrl-C and SLURM signal every process; the main process decides when a run stops (it finishes the step
    and checkpoints), so the DataLoader workers ignore SIGINT, SIGUSR1 and a SIGTERM not sent by their parent."""
    make_image_folder(tmp_path, {"a": 8, "b": 8}, size=16)
    loader = make_loader(ImageFolderDataset(tmp_path, "train", 32, True), 4, train=True, workers=1)
    loader.set_epoch(0)
    before = multiprocessing.active_children()  # a worker of an earlier test may still be ending
    batches = iter(loader)
    first = next(batches)
    workers = [w for w in multiprocessing.active_children() if w not in before]
    assert workers
    for worker in workers:
        for name in ("INT", "USR1", "TERM"):
            subprocess.run(["kill", f"-{name}", str(worker.pid)], check=True)
    time.sleep(0.5)
    assert all(w.is_alive() for w in workers)
    assert len([first, *batches]) == 4  # the epoch goes on
    for worker in workers:
        worker.join(timeout=30)
        assert not worker.is_alive()
