"""`peffnet models`, `peffnet profile` and every command's --help: output and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import COMMAND_ENV, meta_model
from peffnet.cli import main
from peffnet.models import DEFAULT_NORM, NORMS
from peffnet.models.config import split_norm
from peffnet.models.profile import profile_model


def test_models_lists_names_with_norm_params_and_macs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--json", "g16_efficientnet_b0*", "efficientnet_b1_lnpn"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert list(rows) == ["efficientnet_b1_lnpn", "g16_efficientnet_b0", *(f"g16_efficientnet_b0_{n}" for n in NORMS)]
    bare, lnpn = rows["g16_efficientnet_b0"], rows["g16_efficientnet_b0_lnpn"]
    assert bare["norm"] == DEFAULT_NORM == "bn" and bare["default_norm"] and not lnpn["default_norm"]
    assert lnpn["timm_name"] == "peffnet_g16_efficientnet_b0_lnpn"
    assert (lnpn["group_size"], lnpn["expansion"]) == (16, 4)
    macs = {bare: profile_model(model := meta_model(bare, norm="bn"), model.cfg.resolution).macs
            for bare in ("g16_efficientnet_b0", "efficientnet_b1")}  # norm-independent (test_models.py)
    for name, row in rows.items():  # counted on the meta device, equal to the real models' counts
        model = meta_model(name)
        assert row["params"] == sum(p.numel() for p in model.parameters()), name
        assert row["macs"] == macs[split_norm(name)[0]]
        assert row["resolution"] == model.cfg.resolution
    assert main(["models", "g16_efficientnet_b0_l*"]) == 0
    out = capsys.readouterr().out
    assert "g16_efficientnet_b0_lnpn" in out and "5.94M" in out and "0.635G" in out and "bn (default)" not in out
    assert main(["models", "nothing*"]) == 2
    assert "no model name matches nothing*" in capsys.readouterr().err


def test_profile_json_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "g16_efficientnet_b0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert isinstance(out["params"], int) and isinstance(out["macs"], int)
    assert out["resolution"] == 224
    assert abs(out["params"] - 5.91e6) < 0.01e6
    assert set(out["parts"]) == {"stem", *(f"stage{i}" for i in range(1, 8)), "head"}
    assert sum(p["macs"] for p in out["parts"].values()) == out["macs"]
    assert sum(p["params"] for p in out["parts"].values()) == out["params"]


def test_profile_resolution_and_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "efficientnet_b0", "--resolution", "448", "--group-size", "4", "--expansion", "5",
                 "--json"]) == 0
    big = json.loads(capsys.readouterr().out)
    assert main(["profile", "efficientnet_b0", "--group-size", "4", "--expansion", "5", "--json"]) == 0
    native = json.loads(capsys.readouterr().out)
    assert big["resolution"] == 448 and big["params"] == native["params"]
    assert 3.8 < big["macs"] / native["macs"] < 4.1  # MACs scale with pixels


def test_profile_input_channels_and_classes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "g16_efficientnet_b0", "--resolution", "32", "--json"]) == 0
    rgb = json.loads(capsys.readouterr().out)
    assert main(["profile", "g16_efficientnet_b0", "--resolution", "32", "--in-chans", "1", "--num-classes", "10",
                 "--json"]) == 0
    gray = json.loads(capsys.readouterr().out)
    stem = 32 * 3 * 3 * 16 * 16  # stem conv MACs per input channel at 32 px (stride 2)
    assert rgb["params"] - gray["params"] == 2 * 32 * 3 * 3 + 990 * 1280 + 990  # stem weights, classifier
    assert rgb["macs"] - gray["macs"] == 2 * stem + 990 * 1280


def test_profile_text_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "g16_efficientnet_b0", "--norm", "gn"]) == 0
    out = capsys.readouterr().out
    for word in ("parameters", "forward MACs", "activation memory", "arithmetic intensity", "stage7",
                 "stages.1.0.spatial.conv"):
        assert word in out


def test_intensity_grows_with_group_size(capsys: pytest.CaptureFixture[str]) -> None:
    values = []
    for g in ("1", "16"):
        main(["profile", "efficientnet_b0", "--group-size", g, "--json"])
        values.append(json.loads(capsys.readouterr().out)["intensity"])
    assert values[1] > values[0]  # Appendix A: intensity increases with G


@pytest.mark.parametrize(("argv", "message"), [
    (["profile", "efficientnet_b9"], "unknown model 'efficientnet_b9'"),
    (["profile", "efficientnet_b0", "--group-size", "0"], "group_size must be a positive integer, got 0"),
    (["profile", "efficientnet_b0", "--group-size", "1.5"], "group_size must be a positive integer, got '1.5'"),
    (["profile", "efficientnet_b0", "--expansion", "-2"], "expansion must be a positive integer, got -2"),
    (["profile", "efficientnet_b0", "--resolution", "31"], "resolution must be at least 32"),
    (["profile", "efficientnet_b0", "--resolution", "big"], "resolution must be an integer, got 'big'"),
    (["profile", "efficientnet_b0", "--norm", "in"], "unknown norm 'in'"),
])
def test_bad_input_exit_2_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.slow  # a fresh Python process
def test_console_script_usage_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "peffnet", "profile"], capture_output=True, text=True, env=COMMAND_ENV)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "MODEL" in proc.stderr.upper()
    assert main(["profile", "nope"]) == 2  # a bad value: the same one line (in this process: no second start)
    err = capsys.readouterr().err
    assert err == "peffnet profile: error: unknown model 'nope'; run `peffnet models` for the list\n"


def test_every_command_prints_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    from peffnet.cli import build_parser

    commands = list(build_parser()._subparsers._group_actions[0].choices)
    assert {"train", "finetune", "recipe", "study", "bench", "predict"} <= set(commands)
    for command in commands:
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0, command
        assert capsys.readouterr().out.startswith(f"usage: peffnet {command}"), command
