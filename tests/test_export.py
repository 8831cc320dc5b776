"""`peffnet export`: ONNX and TorchScript files that reproduce PyTorch to 1e-4 and carry their class names and
preprocessing; bad input."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import peffnet.serving.export as export_mod
from conftest import copy_run, documented_keys
from peffnet.checkpoint import load_checkpoint, model_from_checkpoint
from peffnet.cli import main
from peffnet.errors import ConfigError
from peffnet.serving.metadata import KEYS, TORCHSCRIPT_EXTRA

pytestmark = pytest.mark.usefixtures("one_thread_module")

@pytest.fixture(scope="module")
def run_dir(served_run: Path) -> Path:
    """The shared tiny G16-LN+PN run (tests/conftest.py): trained at 32 px, evaluated at 64 px."""
    return served_run


def batch(run_dir: Path, n: int, side: int, seed: int) -> torch.Tensor:
    """``n`` random inputs of ``side`` px with the run's input channels (1 for Fashion-MNIST)."""
    chans = model_from_checkpoint(run_dir / "checkpoint.pt")[0].cfg.in_chans
    return torch.randn(n, chans, side, side, generator=torch.Generator().manual_seed(seed))


def reference_logits(run_dir: Path, x: torch.Tensor) -> np.ndarray:
    model, _ = model_from_checkpoint(run_dir / "checkpoint.pt")
    with torch.no_grad():
        return model(x).numpy()


@pytest.mark.slow  # the ONNX exporter traces with torch.export (~15 s): one export, shared with test_predict.py
def test_onnx_export_matches_pytorch(run_dir: Path, served_onnx: tuple[Path, str]) -> None:
    import onnxruntime as ort

    out, printed = served_onnx  # `peffnet export RUN --out FILE`: ONNX at the recorded evaluation resolution
    # stem + 16 spatial convs + head (expansion 1: no block has an expansion conv): every proxy norm is folded
    assert "18 proxy-norm layers folded" in printed
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = batch(run_dir, 5, 64, seed=1)  # batch 5: the batch axis is dynamic
    got = session.run(None, {"input": x.numpy()})[0]
    assert got.shape == (5, 10)
    np.testing.assert_allclose(got, reference_logits(run_dir, x), rtol=0, atol=1e-4)
    # the file describes itself: class names and the recorded preprocessing
    props = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    assert set(props) == set(KEYS) == documented_keys("ONNX `metadata_props`")
    assert props["format"] == "peffnet-export-v1" and props["weights"] == "averaged"
    assert props["classes"] == load_checkpoint(run_dir / "checkpoint.pt")["classes"]
    assert props["preprocessing"] == load_checkpoint(run_dir / "checkpoint.pt")["preprocessing"]
    assert props["preprocessing"]["resolution"] == 64
    assert props["train_resolution"] == 32 and props["model_config"]["norm"] == "lnpn"


def test_torchscript_export_matches_pytorch_at_the_recorded_and_another_resolution(run_dir: Path, tmp_path: Path,
                                                                                   capsys) -> None:
    run_dir = copy_run(run_dir, tmp_path / "run")  # without --out, the export lands in the run directory
    assert main(["export", str(run_dir / "checkpoint.pt"), "--format", "torchscript"]) == 0
    out = run_dir / "g16_efficientnet_b0-64px.torchscript.pt"  # at the recorded evaluation resolution
    assert str(out) in capsys.readouterr().out
    recorded = load_checkpoint(run_dir / "checkpoint.pt")["preprocessing"]
    assert json.loads(Path(f"{out}.json").read_text())["preprocessing"] == recorded
    out = tmp_path / "m96.pt"
    assert main(["export", str(run_dir), "--format", "torchscript", "--resolution", "96", "--out", str(out)]) == 0
    x = batch(run_dir, 4, 96, seed=2)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream, still loadable
        got = torch.jit.load(str(out))(x).numpy()
    np.testing.assert_allclose(got, reference_logits(run_dir, x), rtol=0, atol=1e-4)
    # the description, in the file (extra file peffnet.json) and beside it (FILE.json): the preprocessing at the
    # exported resolution, not the recorded 64 px: the image on a 96 px canvas
    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert set(sidecar) == set(KEYS)
    assert sidecar["preprocessing"] == {**recorded, "resolution": 96, "resize": 96, "crop_pct": 1.0}
    extra = {TORCHSCRIPT_EXTRA: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra[TORCHSCRIPT_EXTRA]) == sidecar


def test_an_older_checkpoint_is_described_by_its_pretrained_cfg(run_dir: Path, tmp_path: Path, capsys) -> None:
    state = load_checkpoint(run_dir / "checkpoint.pt")
    del state["classes"], state["preprocessing"]
    torch.save(state, tmp_path / "old.pt")
    assert main(["export", str(tmp_path / "old.pt"), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "records no classes and no preprocessing (written by an older peffnet)" in err
    sidecar = json.loads((tmp_path / "m.pt.json").read_text())
    assert sidecar["classes"] == [str(i) for i in range(10)]
    assert sidecar["preprocessing"]["resolution"] == 32 and sidecar["preprocessing"]["resize"] == 36


def test_mismatch_writes_nothing(run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """A served form that drifts from the checkpoint's model (a fold gone wrong) is caught and nothing written."""
    fold = export_mod.fold_for_inference

    def drifting_fold(model: torch.nn.Module) -> int:
        count = fold(model)
        with torch.no_grad():
            model.get_classifier().bias.add_(1e-3)
        return count

    monkeypatch.setattr(export_mod, "fold_for_inference", drifting_fold)
    out = tmp_path / "bad.pt"
    with pytest.raises(ConfigError, match=r"differs from PyTorch by 0\.00\d+ > 0\.0001; nothing written"):
        export_mod.export_checkpoint(run_dir, "torchscript", out=out)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporaries


@pytest.mark.parametrize(("args", "message"), [
    (["{missing}"], "cannot read checkpoint"),
    (["{run}", "--resolution", "16"], "resolution must be at least 32"),
    (["{run}", "--resolution", "big"], "resolution must be an integer"),
    (["{run}", "--out", "{missing}/x.onnx"], "does not exist"),
])
def test_bad_input_is_one_line_exit_2(run_dir: Path, tmp_path: Path, args: list[str], message: str, capsys) -> None:
    argv = [a.format(run=run_dir, missing=tmp_path / "nope") for a in args]
    assert main(["export", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("peffnet export: error: ") and message in err
