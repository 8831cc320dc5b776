"""``--config FILE.yaml``: every command whose settings are declared reads them from a YAML file too
(defaults < file < flags; docs/training.md, "Settings: flags and YAML")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peffnet.cli import build_parser, main

# what each command needs on its command line before its settings are read (argparse's required positionals)
POSITIONALS = {"bench": ["efficientnet_b0"], "roofline": ["efficientnet_b0"], "profile": ["efficientnet_b0"],
               "export": ["run"], "eval": ["run"], "finetune": ["run"], "predict": ["run", "image.png"],
               "report": ["run"], "data pack": ["imagefolder:d", "--out", "o"], "data bench": ["imagefolder:d"]}


def commands() -> list[str]:
    """Every command, a command with subcommands as each of them ("data pack")."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    names = []
    for name, parser in sorted(sub.choices.items()):
        nested = [a for a in parser._actions if isinstance(a, type(sub))]
        names += [f"{name} {n}" for n in sorted(nested[0].choices)] if nested else [name]
    return names


@pytest.mark.parametrize("command", commands())
def test_every_command_reads_its_settings_from_config(command: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("no_such_setting: 1\n")
    code = main([*command.split(), *POSITIONALS.get(command, []), "--config", str(bad)])
    command = command.split()[0]
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"peffnet {command}: error: config {bad} has unknown setting(s): no_such_setting"


def test_config_values_apply_and_flags_override_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "sizes.yaml"
    path.write_text("native: 96\nmax: 200\njson: true\n")
    assert main(["resolutions", "--config", str(path)]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["native"], plan["half"], plan["test_resolutions"]) == (96, 64, [64, 96, 128, 160, 192])
    assert main(["resolutions", "--config", str(path), "--native", "128", "--max", "160"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["native"], plan["test_resolutions"]) == (128, [96, 128, 160])
    path.write_text("patterns: [g16_efficientnet_b0_lnpn]\njson: true\n")
    assert main(["models", "--config", str(path)]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == ["g16_efficientnet_b0_lnpn"]
