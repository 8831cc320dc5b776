"""``peffnet data bench`` and the device check's loader measurement (run here on the CPU: on a GPU the same code
measures nvJPEG too)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peffnet.cli import main
from peffnet.measure.loader import device_loader_check
from test_pipeline import photo_folder


@pytest.mark.slow  # a benchmark
def test_data_bench_reports_loader_and_model_speed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = photo_folder(tmp_path / "photos", classes=2, train=4, val=1)
    out = tmp_path / "bench.json"
    assert main(["data", "bench", f"imagefolder:{folder}", "--resolutions", "64", "--batch-size", "4",
                 "--repeats", "1", "--decode", "both", "--model", "efficientnet_b0", "--norm", "gn",
                 "--out", str(out)]) == 0
    table = capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["command"].startswith(f"peffnet data bench imagefolder:{folder}")
    assert [(r["resolution"], r["decode"]) for r in record["results"]] == [(64, "cpu"), (64, "device")]
    for r in record["results"]:
        assert r["loader_img_per_s_per_worker"] > 0 and r["model_img_per_s"] > 0
        assert r["workers_needed"] == pytest.approx(r["model_img_per_s"] / r["loader_img_per_s_per_worker"])
        assert r["verdict"] in table
    assert main(["data", "bench", "synthetic"]) == 2  # in-memory sets are not decoded
    assert "in-memory dataset" in capsys.readouterr().err


@pytest.mark.slow  # a benchmark
def test_device_loader_check_makes_its_own_images() -> None:
    record = device_loader_check("cpu", resolutions=(64,), images=16, batch_size=4, amp=False, repeats=1)
    assert record["data"].startswith("imagefolder:") and not Path(record["data"].split(":", 1)[1]).exists()
    assert {r["decode"] for r in record["results"]} == {"cpu", "device"}
    assert all(r["model_img_per_s"] > 0 and isinstance(r["keeps_up"], bool) for r in record["results"])
