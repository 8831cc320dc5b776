"""Resolution rules and `peffnet resolutions` (paper Section 3.3 and Table 1)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import meta_model
from peffnet import resolution as res
from peffnet.cli import main
from peffnet.errors import ConfigError
from peffnet.models import list_models, preset
from peffnet.resolution import PUBLISHED_HALF, half_resolution, half_resolution_rule, mod32_ok, resolution_plan


def feature_sizes(name: str, resolution: int) -> list[int]:
    """Spatial size after the stem and after every stage, from a real forward pass on the meta device."""
    model = meta_model(name)
    sizes: list[int] = []
    for module in (model.stem, *(stage[-1] for stage in model.stages)):
        module.register_forward_hook(lambda _m, _i, out: sizes.append(out.shape[-1]))
    model(torch.empty(1, 3, resolution, resolution, device="meta"))
    return sizes


def test_published_half_sizes() -> None:
    assert {n: half_resolution(n) for n in PUBLISHED_HALF} == {
        224: 160, 240: 176, 260: 196, 300: 204, 380: 252, 456: 328}


def test_rule_matches_published_except_b4() -> None:
    """The stated rule reproduces Table 1 except B4, where the authors chose the other neighbour."""
    for native, half in PUBLISHED_HALF.items():
        if native != 380:
            assert half_resolution_rule(native) == half
    assert half_resolution_rule(380) == 284
    assert abs(284 - 380 / math.sqrt(2)) < abs(252 - 380 / math.sqrt(2))


# Paper Table 5: best test sizes of the G16-GN/LN+PN "Half" and "Native" columns, B0-B5.
TABLE5_BEST = {"half": {224: (352, 384), 240: (400, 400), 260: (388, 420), 300: (460, 396), 380: (508, 444),
                        456: (424, 488)},
               "native": {224: (480, 416, 448), 240: (528, 528, 528), 260: (548, 516, 516), 300: (652, 588, 556),
                          380: (668, 572, 604), 456: (680, 648, 616)}}


def test_paper_best_sizes_follow_the_mod32_rule() -> None:
    """Every best size of Table 5 is = its training size (mod 32): evidence for B2 = 196 (192 would fail)."""
    for native, sizes in TABLE5_BEST["half"].items():
        assert all(mod32_ok(half_resolution(native), r) for r in sizes), native
        assert native != 260 or not mod32_ok(192, sizes[0])
    for native, sizes in TABLE5_BEST["native"].items():
        assert all(mod32_ok(native, r) for r in sizes), native


def test_rule_for_b6_b7_and_custom() -> None:
    assert half_resolution(528) == 368 and half_resolution(600) == 440
    assert half_resolution(64) == 32 and half_resolution(32) == 32
    for native in range(32, 800):
        half = half_resolution_rule(native)
        assert (native - half) % 32 == 0 and 32 <= half <= native
        if native / math.sqrt(2) >= 48:  # both lattice neighbours of the target are >= 32
            assert abs(half - native / math.sqrt(2)) <= 16


@pytest.mark.parametrize("name", list_models())
def test_every_preset_keeps_mod32(name: str) -> None:
    native = preset(name).resolution
    plan = resolution_plan(native)
    assert plan["native"] == native and (native - plan["half"]) % 32 == 0
    assert plan["half"] < native and plan["native"] in plan["test_resolutions"]
    assert all(mod32_ok(plan["half"], r) and mod32_ok(native, r) for r in plan["test_resolutions"])
    assert plan["test_resolutions"] == sorted(plan["test_resolutions"])


def test_mod32_keeps_odd_layers_at_same_depths() -> None:
    """The reason for the rule: the parity of every stride-2 output is the same for 160 and 224."""
    parity = [s % 2 for s in feature_sizes("efficientnet_b0", 224)]
    assert [s % 2 for s in feature_sizes("efficientnet_b0", 160)] == parity
    assert [s % 2 for s in feature_sizes("efficientnet_b0", 208)] != parity  # 208 != 224 (mod 32)


def test_resolutions_in_range() -> None:
    assert res.test_resolutions(160, 100, 300) == [128, 160, 192, 224, 256, 288]
    assert res.test_resolutions(204, 0, 100) == [44, 76]
    assert res.test_resolutions(64, 65, 95) == []
    with pytest.raises(ConfigError, match="empty resolution range"):
        res.test_resolutions(64, 200, 100)


@pytest.mark.parametrize("bad", [31, 0, -224, "224", 2.5, True])
def test_bad_resolutions(bad: object) -> None:
    with pytest.raises(ConfigError, match="resolution"):
        half_resolution(bad)  # type: ignore[arg-type]


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["resolutions", "efficientnet_b4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["native"], out["half"], out["half_rule"]) == (380, 252, 284)
    assert out["test_resolutions"][0] == 252 and max(out["test_resolutions"]) <= 700
    assert main(["resolutions", "--native", "300", "--min", "200", "--max", "400", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["native"], out["half"], out["test_resolutions"]) == (300, 204, [204, 236, 268, 300, 332, 364, 396])


def test_cli_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["resolutions", "g16_efficientnet_b0"]) == 0
    out = capsys.readouterr().out
    assert "native 224 px, half 160 px" in out and "160, 192, 224" in out


@pytest.mark.parametrize("argv, message", [
    (["resolutions"], "give a MODEL or --native"),
    (["resolutions", "--native", "16"], "at least 32"),
    (["resolutions", "--native", "abc"], "must be an integer"),
    (["resolutions", "efficientnet_b9"], "unknown model"),
])
def test_cli_bad_input(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
