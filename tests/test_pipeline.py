"""The encoded-image pipeline: the paper's augmentation drawn as torchvision draws it, decoding at a DCT scale
close to a full decode, validation as the recorded preprocessing, determinism, and the device decoder through
its CPU fallback."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from peffnet.data import build_dataset, make_loader
from peffnet.data.decode import (
    DeviceDecoder,
    Plan,
    centre_plan,
    decode_box,
    open_image,
    random_resized_crop,
    sample_generator,
)
from peffnet.data.images import Sample, collate, finish
from peffnet.data.photos import make_image
from peffnet.data.preprocessing import Preprocessing


def photo_folder(root: Path, classes: int = 2, train: int = 6, val: int = 2) -> Path:
    """A small folder of photo-like JPEGs (400-640 px, quality 90), made by peffnet.data.photos."""
    for split, count in (("train", train), ("val", val)):
        for label in range(classes):
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                (folder / f"{i}.jpg").write_bytes(make_image(0, split, label, i))
    return root


def ks_pvalue(a: np.ndarray, b: np.ndarray) -> float:
    """The p-value of the two-sample Kolmogorov-Smirnov test that ``a`` and ``b`` come from one distribution.
    scipy.stats is imported here: it takes over a second, which every xdist worker would pay collecting."""
    from scipy.stats import ks_2samp

    return float(ks_2samp(a, b).pvalue)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return photo_folder(tmp_path_factory.mktemp("photos"))


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (1000, 100)])
def test_crop_boxes_follow_torchvision_random_resized_crop(size: tuple[int, int]) -> None:
    """Areas, aspects and positions of 4000 boxes against torchvision's get_params (two-sample KS tests); the
    1000x100 image exercises the fallback box."""
    width, height = size
    ours = np.array([random_resized_crop(width, height, sample_generator(3, 1, i)) for i in range(4000)], float)
    torch.manual_seed(0)
    image = torch.empty(1, height, width)
    theirs = np.array([v2.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(4000)],
                      float)[:, [1, 0, 3, 2]]  # (top, left, h, w) -> (left, top, w, h)
    features = {"area": lambda b: b[:, 2] * b[:, 3], "aspect": lambda b: b[:, 2] / b[:, 3],
                "centre x": lambda b: b[:, 0] + b[:, 2] / 2, "centre y": lambda b: b[:, 1] + b[:, 3] / 2}
    for name, f in features.items():
        assert ks_pvalue(f(ours), f(theirs)) > 1e-3, name
    assert (ours[:, 0] >= 0).all() and (ours[:, 0] + ours[:, 2] <= width).all()
    assert (ours[:, 1] >= 0).all() and (ours[:, 1] + ours[:, 3] <= height).all()
    area = ours[:, 2] * ours[:, 3] / (width * height)
    if size != (1000, 100):
        assert area.min() >= 0.075 and area.max() <= 1.0


def full_decode_crop(data: bytes, plan: Plan, size: int) -> np.ndarray:
    """The reference: decode the whole file, cut the box, resize (Pillow, bilinear, antialiased), flip."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    out = image.resize((size, size), Image.Resampling.BILINEAR,
                       box=(plan.left, plan.top, plan.left + plan.width, plan.top + plan.height))
    if plan.flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(out, np.float64)


def test_decoding_at_a_dct_scale_gives_the_box_a_full_decode_gives(photos: Path) -> None:
    """A box decoded at 1/2, 1/4 or 1/8 scale differs from the same box of a full decode by one or two levels on
    average (libjpeg's scaled IDCT downsamples a little more sharply than Pillow's antialiased bilinear: these
    images have grain)."""
    data = (photos / "train" / "c0" / "0.jpg").read_bytes()
    width, height = Image.open(io.BytesIO(data)).size
    for side, size in ((400, 200), (320, 80), (300, 32)):  # DCT scales 2, 4, 8
        plan = Plan(10, 20, side, side, flip=True)
        ours = decode_box(open_image(io.BytesIO(data)), plan, size).permute(1, 2, 0).numpy().astype(np.float64)
        assert ours.shape == (size, size, 3)
        assert np.abs(ours - full_decode_crop(data, plan, size)).mean() < 2.5, (side, size)
    assert (width, height) == Image.open(io.BytesIO(data)).size


def test_training_outputs_match_torchvision_statistically(photos: Path) -> None:
    """The training pipeline against torchvision's RandomResizedCrop + flip on fully decoded images: the
    distributions of per-image mean and standard deviation of the outputs agree (KS), as do their averages."""
    dataset = build_dataset(f"imagefolder:{photos}", "train", 64, True)
    files = [dataset.source.name(i) for i in range(len(dataset))]
    reference = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(64, antialias=True), v2.RandomHorizontalFlip()])
    torch.manual_seed(0)
    ours, theirs = [], []
    for epoch in range(25):
        for i, path in enumerate(files):
            ours.append(dataset.sample((i, epoch, 0)).pixels.double())
            theirs.append(reference(Image.open(path).convert("RGB")).double())
    for stat in (lambda x: x.mean().item(), lambda x: x.std().item()):
        a, b = np.array([stat(x) for x in ours]), np.array([stat(x) for x in theirs])
        assert ks_pvalue(a, b) > 1e-3
        assert abs(a.mean() - b.mean()) < 3 * math.hypot(a.std(), b.std()) / math.sqrt(len(a))
    left_right = [x[..., :32].mean().item() - x[..., 32:].mean().item() for x in ours]
    assert 0.3 < np.mean(np.array(left_right) > 0) < 0.7  # flipped about half the time


@pytest.mark.parametrize(("resolution", "levels"), [(224, 0.05), (96, 2.0)])
def test_validation_is_the_recorded_preprocessing(photos: Path, resolution: int, levels: float) -> None:
    """Validation images (the centre box resized) against torchvision's resize of the short side to
    r * 256 / 224 and centre crop of the full decode: the same sampling points, so at 224 px (decoded at full
    scale) the same pixels up to rounding; at 96 px, decoded at half scale, within a level or two."""
    dataset = build_dataset(f"imagefolder:{photos}", "val", resolution, False)
    p = dataset.preprocessing
    reference = v2.Compose([v2.PILToTensor(), v2.Resize(p.resize, interpolation=InterpolationMode.BILINEAR,
                                                        antialias=True), v2.CenterCrop(resolution)])
    for i in range(len(dataset)):
        ours = (dataset[i][0] * torch.tensor(p.std).view(3, 1, 1) + torch.tensor(p.mean).view(3, 1, 1)) * 255
        theirs = reference(Image.open(dataset.source.name(i)).convert("RGB")).double()
        assert (ours.double() - theirs).abs().mean() < levels
    plan = centre_plan(500, 375, 224, 256)  # resized to 341 x 256, centre 224 at (58, 16)
    assert (plan.left, plan.top, plan.width, plan.height) == pytest.approx((58 * 500 / 341, 16 * 375 / 256,
                                                                            224 * 500 / 341, 224 * 375 / 256))


def test_augmentation_depends_only_on_seed_epoch_and_index(photos: Path) -> None:
    dataset = build_dataset(f"imagefolder:{photos}", "train", 32, True)
    a, b = dataset.sample((3, 1, 7)).pixels, dataset.sample((3, 1, 7)).pixels
    assert torch.equal(a, b)
    assert not torch.equal(a, dataset.sample((3, 2, 7)).pixels)
    assert not torch.equal(a, dataset.sample((3, 1, 8)).pixels)
    batches = {}
    for workers in (0, 2):
        loader = make_loader(dataset, 4, train=True, seed=7, workers=workers)
        loader.set_epoch(1)
        batches[workers] = list(loader)
    for (x0, y0), (x2, y2) in zip(batches[0], batches[2], strict=True):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)


def test_device_decoder_fallback_gives_the_cpu_images(photos: Path) -> None:
    """decode="device" on a CPU runs the nvJPEG code path with libjpeg-turbo: the same boxes, the same labels,
    pixels within a level or two of the CPU decoder's; files it cannot take (a PNG) go through the workers."""
    png = photos.parent / "mixed"
    photo_folder(png, classes=2, train=3, val=1)
    Image.open(png / "train" / "c0" / "0.jpg").save(png / "train" / "c0" / "9.png")
    dataset = build_dataset(f"imagefolder:{png}", "train", 48, True)
    results = {}
    for decode in ("cpu", "device"):
        loader = make_loader(dataset, 7, train=True, seed=1, workers=0, decode=decode)
        assert loader.decode == decode
        loader.set_epoch(0)
        results[decode] = list(loader)
    for (xc, yc), (xd, yd) in zip(results["cpu"], results["device"], strict=True):
        assert torch.equal(yc, yd) and xd.shape == xc.shape == (7, 3, 48, 48)
        assert (xc - xd).abs().mean() * 0.226 * 255 < 2.0  # in 8-bit levels
    assert make_loader(dataset, 7, train=True, workers=0).decode == "cpu"  # auto without a GPU


def test_device_decoder_skips_a_corrupt_jpeg_and_reports_it(photos: Path) -> None:
    """A JPEG whose header reads but whose data does not (zeros after 600 bytes), left to the device: the device
    refuses it, so does Pillow; its row takes the batch's first image and the file is reported."""
    data = (photos / "train" / "c0" / "0.jpg").read_bytes()
    plan = Plan(0, 0, 200, 200)
    bad = torch.frombuffer(bytearray(data[:600] + bytes(len(data) - 600)), dtype=torch.uint8)
    good = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    decoded = DeviceDecoder(torch.device("cpu"))([good, bad], [plan, plan], 32)
    assert decoded[0].shape == (3, 32, 32) and decoded[1] is None
    batch = collate([Sample(0, data=good, plan=plan, name="good.jpg"), Sample(1, data=bad, plan=plan, name="bad.jpg")],
                    2, 32)
    images = finish(batch, torch.device("cpu"), Preprocessing.image_folder(32))
    assert images.shape == (2, 3, 32, 32) and torch.equal(images[1], images[0])
    assert batch.skipped == ["bad.jpg"]


def test_shift_augmentation_is_the_in_memory_one(tmp_path: Path) -> None:
    """``augment="shift"``: every training image is the file shifted by at most ``translate`` pixels (black where
    it uncovers) and maybe mirrored, as the in-memory sets' augmentation; validation is the file itself."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.fromarray(rng.integers(1, 256, (32, 32), dtype=np.uint8), "L").save(tmp_path / split / "a" / "0.png")
    train = build_dataset(f"imagefolder:{tmp_path}", "train", 32, True, augment="shift", translate=3)
    val = build_dataset(f"imagefolder:{tmp_path}", "train", 32, False, augment="shift")
    assert val.preprocessing.to_dict()["crop_pct"] == 1.0  # checkpoints record it: no centre crop
    image = torch.from_numpy(np.array(Image.open(tmp_path / "train" / "a" / "0.png").convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(val.sample(0).pixels, image)
    padded = torch.nn.functional.pad(image, (3,) * 4)
    seen = set()
    for epoch in range(40):
        out = train.sample((0, epoch, 0)).pixels
        matches = [(dy, dx, flip) for dy in range(7) for dx in range(7) for flip in (False, True)
                   if torch.equal(out, padded[:, dy:dy + 32, dx:dx + 32].flip(-1) if flip else
                                  padded[:, dy:dy + 32, dx:dx + 32])]
        assert matches, epoch
        seen.update(matches)
    assert len(seen) > 20 and {m[2] for m in seen} == {False, True}  # many shifts, both orientations
