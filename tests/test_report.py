"""`peffnet report`: Pareto fronts, G-M-R labels, and a report built from small real training runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from peffnet.cli import main
from peffnet.measure.report import METRICS, load_run, pareto_front, series_label
from peffnet.models import build, preset
from peffnet.models.profile import profile_model

pytestmark = pytest.mark.usefixtures("one_thread_module")

# Three tiny real runs of `peffnet train`: synthetic data, 32 px, 4 steps of 8 images, expansion 1.
TINY = ["--expansion", "1", "--data", "synthetic", "--subset", "32", "--val-subset", "16", "--batch-size", "8",
        "--resolution", "32", "--epochs", "1", "--no-progress", "--drop-rate", "0", "--drop-path-rate", "0",
        "--mixup-alpha", "0", "--cutmix-lambda", "1", "--lr", "0.01", "--warmup-epochs", "0.5", "--recipe-epochs", "0"]
RUNS = {"g1gn": ("efficientnet_b0", "gn"), "g16gn": ("g16_efficientnet_b0", "gn"),
        "g16lnpn": ("g16_efficientnet_b0", "lnpn")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, (model, norm) in RUNS.items():
        out[name] = root / name
        assert main(["train", "--model", model, "--norm", norm, *TINY, "--out", str(out[name])]) == 0
    # One run also evaluated at a second (mod-32) test resolution: it contributes two points.
    assert main(["eval", str(out["g16lnpn"]), "--resolutions", "32,64", "--no-progress"]) == 0
    return out


def brute_force_front(points: list[tuple[float, float]], lower_is_better: bool) -> set[int]:
    """Independent check: i is on the front iff no j is at least as good on both axes and better on one."""
    s = 1 if lower_is_better else -1
    return {i for i, (x, y) in enumerate(points)
            if not any(s * x2 <= s * x and y2 >= y and (s * x2 < s * x or y2 > y) for x2, y2 in points)}


def test_pareto_front_lower_cost_is_better() -> None:
    xs = [1.0, 2.0, 3.0, 2.0, 4.0, 0.5, 4.0]
    ys = [50.0, 60.0, 55.0, 60.0, 70.0, 40.0, 65.0]
    # (3, 55) is beaten by (2, 60); (4, 65) by (4, 70); the duplicate (2, 60) points both stay.
    assert pareto_front(xs, ys) == [5, 0, 1, 3, 4]


def test_pareto_front_higher_throughput_is_better() -> None:
    xs = [100.0, 200.0, 50.0, 150.0]  # img/s
    ys = [50.0, 40.0, 60.0, 50.0]
    assert pareto_front(xs, ys, lower_x_is_better=False) == [1, 3, 2]  # fastest first; (100, 50) is beaten
    assert pareto_front([], []) == []


def test_series_labels_follow_the_paper() -> None:
    g16 = preset("g16_efficientnet_b0", norm="lnpn")
    assert series_label(g16, 224) == "G16-LN+PN-Native"
    assert series_label(g16, 160) == "G16-LN+PN-Half"
    assert series_label(preset("efficientnet_b2", norm="gn"), 196) == "G1-GN-Half"
    assert series_label(preset("g4_efficientnet_b0"), 32) == "G4-BN-32px"


@pytest.mark.slow  # three tiny runs and --measure benchmarks them
def test_report_from_real_runs(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    dirs = [str(p) for p in runs.values()]
    # Without inference figures recorded, the two inference plots are skipped and the table says so.
    assert main(["report", *dirs, "--out", str(out)]) == 0
    assert not (out / "accuracy_vs_latency_ms.png").exists()
    assert "Not drawn (no run recorded it): inference throughput" in (out / "report.md").read_text()

    assert main(["report", *dirs, "--out", str(out), "--measure", "--batch-size", "2", "--repeats", "1",
                 "--device", "cpu"]) == 0
    capsys.readouterr()
    for m in METRICS:
        for ext in ("png", "svg"):
            assert (out / f"accuracy_vs_{m.key}.{ext}").stat().st_size > 1000
    for run in runs.values():  # --measure recorded its figures in each run directory
        recorded = json.loads((run / "bench.json").read_text())
        assert recorded["results"][0]["infer"]["img_per_s"] > 0
    data = json.loads((out / "points.json").read_text())
    points = data["points"]
    assert sorted((Path(p["run"]).name, p["resolution"]) for p in points) == [
        ("g16gn", 32), ("g16lnpn", 32), ("g16lnpn", 64), ("g1gn", 32)]
    assert {p["series"] for p in points} == {"G1-GN-32px", "G16-GN-32px", "G16-LN+PN-32px"}
    lnpn64 = next(p for p in points if p["resolution"] == 64)
    with torch.device("meta"):  # counted on the model itself at the second resolution
        lnpn = build(preset("g16_efficientnet_b0", norm="lnpn", expansion=1, num_classes=10))
    assert lnpn64["macs"] == profile_model(lnpn, 64).macs
    summary = json.loads((runs["g1gn"] / "summary.json").read_text())
    g1 = next(p for p in points if p["series"].startswith("G1-"))
    assert (g1["top1"], g1["train_img_per_s"], g1["macs"]) == (summary["top1"], summary["train_img_per_s"],
                                                                summary["macs"])
    for m in METRICS:
        pairs = [(p[m.key], p["top1"]) for p in points]
        assert set(data["pareto"][m.key]) == brute_force_front(pairs, m.lower_is_better), m.key
    # The cheapest point in MACs and the most accurate one are always on the MACs front.
    macs_front = set(data["pareto"]["macs"])
    assert min(range(4), key=lambda i: (points[i]["macs"], -points[i]["top1"])) in macs_front
    assert max(range(4), key=lambda i: (points[i]["top1"], -points[i]["macs"])) in macs_front
    table = (out / "report.md").read_text()
    assert table.count("| G16-LN+PN-32px |") == 2 and "accuracy_vs_macs.png" in table


@pytest.mark.slow  # a benchmark
def test_load_run_reads_bench_json_written_by_bench(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    run = tmp_path / "copy"
    run.mkdir()
    for f in ("summary.json", "checkpoint.pt"):
        (run / f).write_bytes((runs["g16gn"] / f).read_bytes())
    assert main(["bench", "g16_efficientnet_b0@32", "--norm", "gn", "--num-classes", "10", "--infer", "--latency",
                 "--batch-size", "2", "--repeats", "1", "--iters", "1", "--latency-iters", "2", "--device", "cpu",
                 "--out", str(run / "bench.json")]) == 0
    capsys.readouterr()
    (point,), _ = load_run(run)
    recorded = json.loads((run / "bench.json").read_text())["results"][0]
    assert point.infer_img_per_s == recorded["infer"]["img_per_s"]
    assert point.latency_ms == recorded["latency"]["median_ms"]


def test_not_a_run_directory_is_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"peffnet report: error: not a run directory (no summary.json): {tmp_path}"


def test_runs_on_different_data_are_refused(tiny_parent: Path, tmp_path: Path, capsys) -> None:
    """Checked before anything is measured; the shared tiny run (tests/conftest.py) and a copy that says
    it was trained on other data."""
    other = tmp_path / "other"
    other.mkdir()
    for f in ("summary.json", "checkpoint.pt"):
        (other / f).write_bytes((tiny_parent / f).read_bytes())
    summary = json.loads((other / "summary.json").read_text())
    (other / "summary.json").write_text(json.dumps({**summary, "dataset": "fashion-mnist"}))
    assert main(["report", str(tiny_parent), str(other), "--out", str(tmp_path / "out"), "--measure"]) == 2
    err = capsys.readouterr().err
    assert (f"cannot share a Pareto front (synthetic (10 classes): {tiny_parent.name}; fashion-mnist (10 classes): "
            "other)") in err
    assert err.count("\n") == 1 and not (other / "bench.json").exists() and not (tmp_path / "out").exists()
    assert not (tiny_parent / "bench.json").exists()


@pytest.mark.slow  # three tiny runs and a fine-tuning
def test_a_fine_tuned_run_is_labelled_as_such(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    ft = tmp_path / "ft"
    assert main(["finetune", str(runs["g16gn"]), "--resolution", "64", "--data", "synthetic", "--subset", "16",
                 "--val-subset", "8", "--batch-size", "8", "--epochs", "1", "--no-progress", "--out", str(ft)]) == 0
    (point,), _ = load_run(ft)
    parent = json.loads((runs["g16gn"] / "summary.json").read_text())
    own = json.loads((ft / "summary.json").read_text())
    assert point.series == "G16-GN-32px"  # the series of the training it continues, not "64px"
    assert (point.train_img_per_s, point.finetune_img_per_s) == (parent["train_img_per_s"], own["train_img_per_s"])
    assert main(["report", str(runs["g16gn"]), str(ft), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    assert "| fine-tune img/s |" in (tmp_path / "out" / "report.md").read_text()


def test_labels_of_nearby_points_do_not_overlap() -> None:
    from peffnet.measure.plotting import label_points, pyplot

    fig, ax = pyplot().subplots(figsize=(6.4, 4.6))
    points = [(1.0, 80.0, "G16-LN+PN-Half"), (1.02, 79.5, "G16-LN+PN-Native"), (1.0, 79.0, "G16-GN-Native"),
              (3.0, 50.0, "G1-BN-Native"), (1.04, 80.2, "G1-GN-Half")]
    ax.scatter([p[0] for p in points], [p[1] for p in points])
    ax.set_xlim(0.5, 3.5)
    ax.set_ylim(40, 90)
    label_points(ax, points)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert [t.get_text() for t in ax.texts] == [p[2] for p in points]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    pyplot().close(fig)
