"""Self-describing artifacts: checkpoints and exported models carry their class names and preprocessing, and
`peffnet predict` applies them: image files reproduce the evaluation's inputs and logits, and the PyTorch and
ONNX paths agree."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import documented_keys
from peffnet.checkpoint import load_checkpoint, model_from_checkpoint
from peffnet.cli import main
from peffnet.data import build_dataset
from peffnet.data.datasets import FASHION_MNIST_CLASSES, SYNTHETIC_CLASS_NAMES
from peffnet.data.preprocessing import Preprocessing
from peffnet.errors import ConfigError
from peffnet.serving.predict import load_predictor, predict, read_image
from resolution_helpers import SERVED_DATA, SERVED_EVAL_RESOLUTION
from train_helpers import make_image_folder

pytestmark = pytest.mark.usefixtures("one_thread_module")

SPEC = SERVED_DATA
CLASSES = list(FASHION_MNIST_CLASSES if SPEC == "fashion-mnist" else SYNTHETIC_CLASS_NAMES)
EVAL_RESOLUTION = SERVED_EVAL_RESOLUTION
INDICES = [0, 1, 2, 3, 7]


@pytest.fixture(scope="module")
def run_dir(served_run: Path) -> Path:
    """The shared tiny G16-LN+PN run (tests/conftest.py): its proxy norm is folded for predict and export."""
    return served_run


@pytest.fixture(scope="module")
def val_set():
    return build_dataset(SPEC, "val", EVAL_RESOLUTION, False)


@pytest.fixture(scope="module")
def images(val_set, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """PNG files of validation images, as the dataset holds them (grayscale for Fashion-MNIST)."""
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i in INDICES:
        pixels = val_set.images[i].permute(1, 2, 0).numpy()
        path = folder / f"val{i}.png"
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def onnx_file(served_onnx: tuple[Path, str]) -> Path:
    """The shared run's ONNX export (tests/conftest.py), at the recorded (evaluation) resolution."""
    return served_onnx[0]


def test_checkpoint_records_classes_and_the_evaluation_preprocessing(run_dir: Path, val_set) -> None:
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert state["classes"] == CLASSES
    recorded = Preprocessing.from_dict(state["preprocessing"])
    assert recorded == val_set.preprocessing and recorded.resolution == EVAL_RESOLUTION
    assert set(state["preprocessing"]) == documented_keys("`checkpoint.pt`: `preprocessing`")
    assert recorded.channels == (1 if SPEC == "fashion-mnist" else 3) == state["data"]["in_chans"]


def test_predicting_a_validation_image_reproduces_the_evaluation(run_dir: Path, val_set, images: list[str]) -> None:
    expected_x, _ = val_set.get_batch(torch.tensor(INDICES), epoch=0, seed=0)
    model, _ = model_from_checkpoint(run_dir / "checkpoint.pt")  # what `peffnet eval` runs: plain, final weights
    with torch.no_grad():
        expected = model(expected_x)
    plain = load_predictor(run_dir, fold=False)
    x = torch.stack([read_image(p, plain.preprocessing) for p in images])
    assert torch.equal(x, expected_x)  # the same input, bit for bit
    assert torch.equal(plain.logits(x), expected)
    folded = load_predictor(run_dir)  # proxy norm folded (paper Section 3.2): equal to rounding
    torch.testing.assert_close(folded.logits(x), expected, rtol=0, atol=1e-4)


@pytest.mark.slow  # exporting ONNX (torch.export): ~15 s on 2 cores
def test_pytorch_and_onnx_predictions_agree(run_dir: Path, onnx_file: Path, images: list[str]) -> None:
    ours, exported = load_predictor(run_dir), load_predictor(onnx_file)
    assert exported.kind == "onnx" and exported.classes == CLASSES
    assert exported.preprocessing == ours.preprocessing
    a, b = predict(ours, images, top_k=3), predict(exported, images, top_k=3)
    for x, y in zip(a, b, strict=True):
        assert [c for c, _, _ in x.top] == [c for c, _, _ in y.top]
        np.testing.assert_allclose([p for *_, p in x.top], [p for *_, p in y.top], rtol=0, atol=1e-4)


def test_cli_lines_and_json(run_dir: Path, images: list[str], capsys) -> None:
    assert main(["predict", str(run_dir), *images[:2], "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for line, path in zip(lines, images[:2], strict=True):
        head, _, rest = line.partition(": ")
        pairs = rest.split(", ")
        assert head == path and len(pairs) == 2
        assert all(p.rsplit(" ", 1)[0] in CLASSES and 0 <= float(p.rsplit(" ", 1)[1]) <= 1 for p in pairs)
    assert main(["predict", str(run_dir), *images, "--top-k", "20", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert set(record) == documented_keys("`peffnet predict --json`")
    each = record["predictions"]
    assert [r["image"] for r in each] == images and all(set(r) == {"image", "top_k"} for r in each)
    assert all(len(r["top_k"]) == 10 for r in each)  # at most every class
    assert all(set(t) == documented_keys("`peffnet predict --json`: each of `top_k`") for t in each[0]["top_k"])
    assert abs(sum(t["probability"] for t in each[0]["top_k"]) - 1) < 1e-9


def test_an_unreadable_image_is_one_line_and_nothing_else(run_dir: Path, images: list[str], tmp_path: Path,
                                                           capsys) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    for bad in (broken, tmp_path / "missing.jpg"):
        assert main(["predict", str(run_dir), images[0], str(bad), images[1]]) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert err.startswith(f"peffnet predict: error: cannot read image {bad}: ") and err.count("\n") == 1


def test_any_image_mode_is_converted_as_the_dataset_does(run_dir: Path, images: list[str], tmp_path: Path) -> None:
    predictor = load_predictor(run_dir)
    original = Image.open(images[0])
    pixels = np.asarray(original)
    gray = pixels if pixels.ndim == 2 else None
    variants = {"rgba": original.convert("RGBA"), "rgb": original.convert("RGB")}
    if gray is not None:  # grayscale: the same values as a palette image and as 16-bit samples
        palette = Image.frombytes("P", original.size, gray.tobytes())
        palette.putpalette([v for g in range(256) for v in (g, g, g)])
        sixteen = Image.fromarray(gray.astype(np.uint16) * 257)
        assert sixteen.mode == "I;16"
        variants.update(palette=palette, gray16=sixteen)
    expected = read_image(images[0], predictor.preprocessing)
    for name, image in variants.items():
        path = tmp_path / f"{name}.png"
        image.save(path)
        assert torch.equal(read_image(path, predictor.preprocessing), expected), name
    resized = tmp_path / "large.png"
    original.resize((original.width * 3, original.height * 2)).save(resized)
    assert read_image(resized, predictor.preprocessing).shape == expected.shape  # fitted to the image size


def test_image_folder_files_get_the_validation_transform(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", {"cat": 2, "dog": 2}, size=50)
    val = build_dataset(f"imagefolder:{root}", "val", 40, False)
    assert val.classes == ["cat", "dog"]
    assert val.preprocessing == Preprocessing.image_folder(40)
    assert (val.preprocessing.resize, val.preprocessing.interpolation) == (45, "bilinear")
    for i in range(len(val)):
        torch.testing.assert_close(read_image(val.source.name(i), val.preprocessing), val[i][0], rtol=0, atol=0)


def test_older_checkpoints_are_refused_or_fall_back_to_indices_and_the_pretrained_cfg(
        run_dir: Path, images: list[str], tmp_path: Path, capsys) -> None:
    state = load_checkpoint(run_dir / "checkpoint.pt")
    del state["classes"], state["preprocessing"]
    old = tmp_path / "old.pt"
    torch.save(state, old)
    assert main(["predict", str(old), images[0]]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "records no class names" in err and "--index-labels" in err
    assert main(["predict", str(old), images[0], "--top-k", "1", "--index-labels"]) == 0
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "records no classes and no preprocessing" in err and "pretrained_cfg" in err
    assert out.split(": ")[1].split()[0] in [str(i) for i in range(10)]


@pytest.mark.slow  # exporting ONNX
def test_onnx_without_metadata_is_refused(onnx_file: Path, images: list[str], tmp_path: Path, capsys) -> None:
    import onnx

    model = onnx.load(str(onnx_file))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    assert main(["predict", str(bare), images[0]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "carries no peffnet metadata" in err
    not_onnx = tmp_path / "x.onnx"
    shutil.copy(images[0], not_onnx)
    with pytest.raises(ConfigError, match="cannot read ONNX model"):
        load_predictor(not_onnx)


def test_preprocessing_records_round_trip_and_are_checked() -> None:
    folder = Preprocessing.image_folder(224)
    assert folder.resize == 256 and folder.to_dict()["crop_pct"] == 0.875
    assert Preprocessing.from_dict(folder.to_dict()) == folder
    assert folder.at(64) == Preprocessing.image_folder(64)
    canvas = Preprocessing.canvas(32, 28, 2, (0.3,), (0.35,))
    assert canvas.at(64).resize == 64 and canvas.at(64).image_size == 28
    for bad in ({**folder.to_dict(), "channels": 2}, {**folder.to_dict(), "std": [1, 0, 1]},
                {**folder.to_dict(), "mean": [0.5]}, {**folder.to_dict(), "interpolation": "lanczos"},
                {"resolution": 32}, [1, 2]):
        with pytest.raises(ConfigError, match="preprocessing"):
            Preprocessing.from_dict(bad)
