"""`peffnet bench`: batch search, MAC counting of baselines, memory accounting, alternation, bad input."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from peffnet.cli import main
from peffnet.errors import ConfigError
from peffnet.measure.bench import BenchOptions, run_bench
from peffnet.measure.device import DevicePeaks, measure_bandwidth, measure_peak_macs
from peffnet.measure.roofline import layer_kind
from peffnet.measure.subjects import BenchSpec, build_model, parse_spec
from peffnet.measure.timing import alternate, max_batch
from peffnet.models import create_model
from peffnet.models.profile import conv_layers, model_macs, profile_model
from peffnet.runtime.device import peak_transient_bytes

pytestmark = pytest.mark.usefixtures("one_thread")

FAKE_PEAKS = DevicePeaks("cpu", "float32", 1e11, 1e10)  # skip the microbenchmarks where they are not tested


def test_max_batch_doubles_then_bisects() -> None:
    probes: list[int] = []

    def fits(b: int) -> bool:
        probes.append(b)
        return b <= 37

    assert max_batch(fits) == 37
    assert probes[:7] == [1, 2, 4, 8, 16, 32, 64]  # doubling until 64 fails
    assert set(probes[7:]) <= set(range(33, 64))  # then bisection inside (32, 64)
    assert max_batch(lambda b: True, limit=100) == 100
    assert max_batch(lambda b: b <= 1) == 1
    with pytest.raises(ConfigError):
        max_batch(lambda b: False)


def test_generic_layer_count_matches_profile_for_our_model() -> None:
    model = create_model("g16_efficientnet_b0", num_classes=10)
    generic = conv_layers(model, 96, batch_size=4)
    ours = profile_model(model, 96, batch_size=4).layers
    assert [(g.name, g.macs, g.group_size, g.field) for g in generic] == [(o.name, o.macs, o.group_size, o.field)
                                                                           for o in ours]
    assert [g.intensity for g in generic] == pytest.approx([o.intensity for o in ours])


@pytest.mark.parametrize("name", ["timm:efficientnet_b0", "torchvision:efficientnet_b0"])
def test_baselines_build_randomly_initialised_with_b0_cost(name: str) -> None:
    model, res, _ = build_model(BenchSpec(name))
    ours, _, _ = build_model(BenchSpec("efficientnet_b0"))
    assert res == 224
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(5.29e6, rel=0.01)  # docs/reference.md, "Peers"
    # Same architecture, same count: within 1 % of our G1 B0 (0.40 GMACs).
    assert model_macs(model, 224) == pytest.approx(model_macs(ours, 224), rel=0.01)
    assert model_macs(ours, 224) == pytest.approx(0.40e9, rel=0.05)  # published 0.40 also counts SE/pool ops


def test_peak_transient_bytes_counts_live_tensors_on_cpu() -> None:
    def step() -> None:
        a = torch.ones(2**20)  # 4 MiB
        b = a * 2  # + 4 MiB while a is alive
        del a, b
        c = torch.ones(2**19)  # 2 MiB after both are freed
        del c

    assert 8 * 2**20 <= peak_transient_bytes(step, torch.device("cpu")) < 8 * 2**20 + 1024  # + profiler scalars


def test_parse_spec_resolution_suffix() -> None:
    spec = parse_spec("g16_efficientnet_b0@160", {"norm": "gn"}, channels_last=True)
    assert (spec.name, spec.resolution, spec.overrides, spec.channels_last) == ("g16_efficientnet_b0", 160,
                                                                                {"norm": "gn"}, True)
    with pytest.raises(ConfigError, match="NAME@PIXELS"):
        parse_spec("efficientnet_b0@big")


@pytest.mark.slow  # a benchmark
def test_run_bench_alternates_and_reports_every_figure() -> None:
    specs = [BenchSpec("efficientnet_b0", {"norm": "gn"}, 32), BenchSpec("g16_efficientnet_b0", {}, 32)]
    opts = BenchOptions(batch_size=2, warmup=1, repeats=2, iters=1, latency_iters=2, num_classes=10)
    out = run_bench(specs, opts, peaks=FAKE_PEAKS)
    first, second = out["results"]
    assert first["train"]["ratio"] == 1.0 and first["infer"]["ratio"] == 1.0 and first["latency"]["ratio"] == 1.0
    for r in out["results"]:
        params_bytes = 4 * r["params"]
        for mode in ("train", "infer"):
            assert r[mode]["img_per_s"] > 0 and r[mode]["batch_size"] == 2
            assert r[mode]["peak_memory_bytes"] > params_bytes  # weights + activations at least
            assert r[mode]["mac_utilization"] == pytest.approx(
                (3 if mode == "train" else 1) * r["macs"] * r[mode]["img_per_s"] / FAKE_PEAKS.macs_per_s)
            lo, hi = r[mode]["ratio_iqr"]
            assert lo <= r[mode]["ratio"] <= hi
        # Training holds gradients, optimizer state and saved activations on top of inference's needs.
        assert r["train"]["peak_memory_bytes"] > r["infer"]["peak_memory_bytes"]
        assert r["latency"]["p90_ms"] >= r["latency"]["median_ms"] > 0 and r["latency"]["samples"] == 4
    assert second["train"]["ratio"] > 0 and second["macs"] != first["macs"]
    assert out["env"]["torch"] == torch.__version__ and out["peaks"]["macs_per_s"] == 1e11


@pytest.mark.slow  # a benchmark
def test_cli_json_and_out_file(tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    rc = main(["bench", "efficientnet_b0", "timm:efficientnet_b0", "--resolution", "32", "--infer", "--batch-size",
               "2", "--repeats", "1", "--iters", "1", "--warmup", "1", "--json", "--out", str(out)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads(out.read_text())
    assert [r["label"] for r in saved["results"]] == ["efficientnet_b0@32", "timm:efficientnet_b0@32"]
    assert "train" not in saved["results"][0] and saved["results"][1]["infer"]["img_per_s"] > 0
    assert printed["results"] == saved["results"] and saved["command"].startswith("peffnet bench")


@pytest.mark.parametrize(("argv", "message"), [
    (["timm:no_such_net"], "unknown timm model 'no_such_net'"),
    (["torchvision:no_such_net"], "unknown torchvision classification model 'no_such_net'"),
    (["keras:efficientnet_b0"], "unknown model source 'keras'"),
    (["no_such_net"], "unknown model 'no_such_net'"),
    (["efficientnet_b0", "--batch-size", "lots"], "batch_size must be a positive integer or 'max', got 'lots'"),
    (["efficientnet_b0", "--batch-size", "0"], "batch_size must be a positive integer or 'max', got '0'"),
    (["efficientnet_b0", "--device", "tpu"], "unknown device 'tpu'"),
    (["efficientnet_b0", "--threads", "0"], "threads must be a positive integer, got 0"),
])
def test_bad_input_is_one_line_exit_2(argv: list[str], message: str, capsys) -> None:
    rc = main(["bench", *argv, "--resolution", "32", "--repeats", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and err.startswith("peffnet bench: error: ") and message in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_missing_cuda_device_is_exit_2(capsys) -> None:
    assert main(["bench", "efficientnet_b0", "--device", "cuda", "--resolution", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "peffnet bench: error: device 'cuda' is not available: torch sees no CUDA GPU on this machine"


def test_batch_that_does_not_fit_is_exit_2(capsys) -> None:
    rc = main(["bench", "efficientnet_b0", "--infer", "--resolution", "64", "--batch-size", "100000",
               "--memory-cap", "0.25", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "batch size 100000 does not fit for efficientnet_b0@64 (inference)" in err


@pytest.mark.slow  # a benchmark
def test_batch_size_max_respects_the_cpu_memory_cap() -> None:
    cap = 0.1  # GiB
    opts = BenchOptions(infer=True, batch_size="max", warmup=1, repeats=1, iters=1, memory_cap=cap,
                        num_classes=10)
    specs = [BenchSpec("efficientnet_b0", {}, 32), BenchSpec("efficientnet_b0", {}, 64)]
    small, large = (r["infer"] for r in run_bench(specs, opts, peaks=FAKE_PEAKS)["results"])
    assert 4 < large["batch_size"] < small["batch_size"] < 4096  # 4x the pixels: a smaller batch fits
    for infer in (small, large):  # the measured peak at the chosen batch is near the cap
        assert 0.5 * cap * 2**30 < infer["peak_memory_bytes"] <= 1.2 * cap * 2**30
    # The ratio compares throughput (img/s), not step time, since the batches differ.
    assert large["ratio"] == pytest.approx(large["img_per_s"] / small["img_per_s"])


@pytest.mark.slow  # a benchmark suite
def test_suite_quick_writes_json_and_side_by_side_markdown(tmp_path, monkeypatch) -> None:
    script = Path(__file__).parents[1] / "benchmarks" / "run_suite.py"
    spec = importlib.util.spec_from_file_location("run_suite", script)
    suite = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "run_suite", suite)  # dataclasses look their module up there
    spec.loader.exec_module(suite)
    md = tmp_path / "RESULTS.md"
    assert suite.main(["--quick", "--device", "cpu", "--only", "peers", "resolution", "roofline", "--results",
                       str(tmp_path), "--markdown", str(md)]) == 0
    (path,) = tmp_path.glob("cpu-*-quick.json")
    result = json.loads(path.read_text())
    assert [c["key"] for c in result["comparisons"]] == ["peers", "resolution"]
    peers = result["comparisons"][0]
    assert [r["label"] for r in peers["runs"][0]["results"]] == ["ours G1-BN", "timm", "torchvision"]
    timm = peers["runs"][0]["results"][1]["train"]
    text = md.read_text()
    lo, hi = 1 / timm["ratio_iqr"][1], 1 / timm["ratio_iqr"][0]  # ours / timm: the inverse of timm / ours
    assert f"| ours G1-BN / timm, training | {1 / timm['ratio']:.2f}x ({lo:.2f}-{hi:.2f}) |" in text
    util = timm["achieved_macs_per_s"] / result["peaks"]["macs_per_s"]  # against the suite's best peak
    assert timm["mac_utilization"] == pytest.approx(util)
    assert "## Half vs native training resolution" in text and result["command"] in text
    assert "## Roofline: G1 vs G16 B0" in text and (tmp_path / result["roofline"]["files"][0]).stat().st_size > 1000
    # A partial run (--only) replaces its comparison and keeps the others of the device's file.
    assert suite.main(["--quick", "--device", "cpu", "--only", "resolution", "--results", str(tmp_path),
                       "--markdown", str(md)]) == 0
    merged = json.loads(path.read_text())
    assert [c["key"] for c in merged["comparisons"]] == ["peers", "resolution"] and "roofline" in merged
    ratios = lambda res: [r["train"]["ratio"] for r in res["comparisons"][0]["runs"][0]["results"]]  # noqa: E731
    assert ratios(merged) == ratios(result)  # peers kept as measured
    assert merged["comparisons"][1]["command"].endswith("--only resolution --results " + str(tmp_path)
                                                        + " --markdown " + str(md))
    result = merged
    # A second device's file renders beside the first: one column per device in the headline table.
    other = dict(result, env=dict(result["env"], device="cuda", device_name="Fake GPU"))
    (tmp_path / "cuda-fake-gpu-quick.json").write_text(json.dumps(other))
    assert suite.main(["--render", "--quick", "--results", str(tmp_path), "--markdown", str(md)]) == 0
    assert "| comparison | CPU: " in md.read_text() and "| CUDA: Fake GPU |" in md.read_text()


def test_device_ceilings_are_measured() -> None:
    cpu = torch.device("cpu")
    assert measure_peak_macs(cpu, size=256, repeats=2) > 1e8  # any CPU does 0.1 GMAC/s
    assert measure_bandwidth(cpu, numel=2**22, repeats=2) > 1e8


def test_roofline_places_g16_spatial_convs_at_higher_intensity() -> None:
    """Appendix A: intensity grows with the group size, so G16's spatial convs sit right of G1's."""
    rows = {}
    for name in ("efficientnet_b0", "g16_efficientnet_b0"):
        layers = conv_layers(create_model(name), 224, batch_size=8)
        rows[name] = [layer for layer in layers if layer_kind(layer) == "spatial kxk"]
        assert len(rows[name]) == 16  # one per MBConv block of B0
    g1 = sorted(layer.intensity for layer in rows["efficientnet_b0"])
    g16 = sorted(layer.intensity for layer in rows["g16_efficientnet_b0"])
    assert g16[len(g16) // 2] > 5 * g1[len(g1) // 2]


@pytest.mark.slow  # a benchmark
def test_roofline_cli_writes_plot_and_measured_points(tmp_path, capsys) -> None:
    out = tmp_path / "roof"
    assert main(["roofline", "efficientnet_b0", "timm:efficientnet_b0", "--resolution", "32", "--batch-size", "2",
                 "--device", "cpu", "--out", str(out)]) == 0
    assert "ridge" in capsys.readouterr().out
    for name in ("roofline.png", "roofline.svg"):
        assert (out / name).stat().st_size > 1000
    record = json.loads((out / "roofline.json").read_text())
    ours, timm_layers = record["layers"].values()
    assert len(ours) == len(timm_layers) == 82  # 81 convs + classifier, in both implementations
    assert all(layer["achieved_macs_per_s"] > 0 for layer in ours)
    for layer in ours:  # the median of the rounds lies within their quartiles
        q1, q3 = layer["achieved_quartiles"]
        assert q1 <= layer["achieved_macs_per_s"] <= q3
    q1, q3 = record["summary"][0]["fraction_of_peak_quartiles"]
    assert 0 < q1 <= q3
    assert {r["kind"] for r in record["summary"]} >= {"stem", "spatial kxk", "pointwise 1x1", "squeeze-excite"}
    assert record["peaks"]["ridge_macs_per_byte"] == pytest.approx(
        record["peaks"]["macs_per_s"] / record["peaks"]["bytes_per_s"])


@pytest.mark.slow  # a benchmark
def test_folded_proxy_norm_is_benchmarked_for_inference_only(capsys) -> None:
    opts = BenchOptions(infer=True, batch_size=2, warmup=1, repeats=1, iters=1, num_classes=10)
    specs = [BenchSpec("g16_efficientnet_b0", {"norm": "lnpn"}, 32),
             BenchSpec("g16_efficientnet_b0", {"norm": "lnpn"}, 32, fold_pn=True)]
    unfolded, folded = run_bench(specs, opts, peaks=FAKE_PEAKS)["results"]
    assert folded["label"] == "g16_efficientnet_b0@32 folded" and folded["desc"].endswith("lnpn folded")
    assert folded["macs"] == unfolded["macs"] and folded["infer"]["img_per_s"] > 0
    with pytest.raises(ConfigError, match="folded proxy norm is for inference only"):
        run_bench(specs, BenchOptions(train=True, batch_size=2), peaks=FAKE_PEAKS)
    assert main(["bench", "timm:efficientnet_b0", "--fold-pn", "--resolution", "32"]) == 2
    assert "proxy-norm folding applies to peffnet models, not 'timm:efficientnet_b0'" in capsys.readouterr().err


def test_a_loaded_run_is_named_as_such() -> None:
    """Per-round ratios of 0.63x beside medians of 38.7 vs 37.5 img/s: the load changed during the run."""
    from peffnet.cli.bench import format_result

    row = {"resolution": 32, "params": 1e6, "macs": 1e8}
    result = {"env": {"device_name": "cpu", "torch": "x", "torchvision": "x", "timm": "x"},
              "peaks": {"macs_per_s": 1e10, "bytes_per_s": 1e10, "dtype": "float32"}, "options": {"repeats": 5},
              "results": [
                  {**row, "label": "a", "infer": {"batch_size": 8, "img_per_s": 38.7, "ratio": 1.0,
                                                  "ratio_iqr": [1.0, 1.0], "peak_memory_bytes": 1,
                                                  "mac_utilization": 0.1}},
                  {**row, "label": "b", "infer": {"batch_size": 8, "img_per_s": 37.5, "ratio": 0.63,
                                                  "ratio_iqr": [0.55, 0.98], "peak_memory_bytes": 1,
                                                  "mac_utilization": 0.1}}]}
    text = format_result(result)
    assert "0.63x (0.55-0.98)" in text
    assert "note: the machine's load varied during the run" in text and "b infer 0.63x per round vs 0.97x" in text
    result["results"][1]["infer"]["ratio"] = 0.96
    assert "note:" not in format_result(result)


def test_a_race_stops_timing_what_is_clearly_slower_and_only_within_its_group() -> None:
    """`alternate(race=...)`: a closure 5x slower than its group's best at warm-up gets no rounds, one 1.4x slower
    is dropped once the margin has narrowed below 1.4 (after 2 rounds), one 1.1x slower and a closure alone in
    its group are timed in full. Times come from a clock the closures advance by their cost."""
    now = [0.0]
    costs = {"a": 1.0, "b": 1.1, "c": 5.0, "d": 1.4, "e": 9.0}
    steps = [lambda k=k: now.__setitem__(0, now[0] + costs[k]) for k in costs]
    samples = alternate(steps, warmup=1, repeats=6, iters=1, device=torch.device("cpu"), clock=lambda: now[0],
                        progress=False, race=["g", "g", "g", "g", "h"])
    rounds = {k: len(s) for k, s in zip(costs, samples, strict=True)}
    assert rounds == {"a": 6, "b": 6, "c": 0, "d": 2, "e": 6}
    assert samples[0] == [1.0] * 6 and samples[4] == [9.0] * 6
