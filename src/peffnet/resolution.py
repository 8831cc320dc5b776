"""Training and test image sizes (paper Section 3.3, Table 1).

Two rules:

* **Test/fine-tune resolution**: keep ``r_test = r_train (mod 2**n)``, ``n`` the number of stride-2
  layers (5 for EfficientNet, so mod 32). Then the odd-sized feature maps, whose stride-2 layers
  downsample asymmetrically, fall at the same depths in training and testing (Section 3.3).
* **Half resolution**: about half the pixels of the native size while keeping that rule, i.e. the
  ``native - 32k`` closest to ``native / sqrt(2)``. This reproduces Table 1 for B0, B1, B2 (196, the
  authors' config; the paper prints 192, which breaks the mod-32 rule), B3 and B5. For B4 the rule
  gives 284 (|284 - 268.7| = 15.3 < |252 - 268.7| = 16.7) but the authors train at 252, so the
  published sizes take precedence (:data:`PUBLISHED_HALF`); every other native size uses the rule.
  See ``docs/resolution.md``.
"""

from __future__ import annotations

import math

from peffnet.errors import ConfigError
from peffnet.models.config import B0_STAGES, MIN_RESOLUTION, RESOLUTION
from peffnet.settings import INT, require

MAX_SWEEP_RESOLUTION = 700
"""The paper fine-tunes and tests "at a range of image sizes up to 700x700" (Section 3.3)."""

PUBLISHED_HALF: dict[int, int] = {224: 160, 240: 176, 260: 196, 300: 204, 380: 252, 456: 328}
"""Half-resolution sizes of B0-B5 (paper Table 1; B2 = 196 from the authors' config, docs/reference.md)."""


def downsampling_modulus() -> int:
    """``2**n`` with ``n`` the stride-2 layers of EfficientNet (stem + four stages): 32."""
    return 2 ** (1 + sum(stage.stride == 2 for stage in B0_STAGES))


def check_resolution(value: object, what: str = "resolution") -> int:
    """``value`` as an int of at least :data:`MIN_RESOLUTION`, else a one-line :class:`ConfigError`."""
    return require(what, value, INT, RESOLUTION)


def mod32_ok(train_resolution: int, test_resolution: int) -> bool:
    """Whether ``r_test = r_train (mod 32)`` holds (paper Section 3.3)."""
    return (test_resolution - train_resolution) % downsampling_modulus() == 0


def half_resolution_rule(native: int) -> int:
    """The ``native - 32k`` (at least 32) closest to ``native / sqrt(2)``; a tie takes the smaller.

    Halving the pixels scales each side by ``1/sqrt(2)`` (Section 3.3); stepping by 32 keeps the
    half size in the native size's residue class, so the same test sizes suit both trainings.
    """
    native = check_resolution(native, "native resolution")
    step = downsampling_modulus()
    target = native / math.sqrt(2)
    candidates = range(native, MIN_RESOLUTION - 1, -step)
    return min(candidates, key=lambda r: (abs(r - target), r))


def half_resolution(native: int) -> int:
    """Half-resolution training size: the published one for B0-B5 natives, else the rule.

    >>> [half_resolution(n) for n in (224, 240, 260, 300, 380, 456, 528, 600)]
    [160, 176, 196, 204, 252, 328, 368, 440]
    """
    native = check_resolution(native, "native resolution")
    return PUBLISHED_HALF.get(native, half_resolution_rule(native))


def default_sweep_range(native: int) -> tuple[int, int]:
    """Default test range of a model: from its half size up to ``min(700, 3 * native)``.

    The paper sweeps up to 700 px (its best B0-B5 sizes lie between 1.1x and 2.1x native, Table 5);
    ``3 * native`` keeps the sweep proportionate for small images such as Fashion-MNIST.
    """
    native = check_resolution(native, "native resolution")
    return half_resolution(native), max(native, min(MAX_SWEEP_RESOLUTION, 3 * native))


def test_resolutions(train_resolution: int, lo: int, hi: int) -> list[int]:
    """Every ``r`` in ``[lo, hi]`` with ``r = train_resolution (mod 32)`` and ``r >= 32``, ascending."""
    train_resolution = check_resolution(train_resolution, "training resolution")
    for value, what in ((lo, "lowest resolution"), (hi, "highest resolution")):
        require(what, value, INT)
    if lo > hi:
        raise ConfigError(f"empty resolution range: lowest {lo} > highest {hi}")
    step = downsampling_modulus()
    start = max(lo, MIN_RESOLUTION)
    first = start + (train_resolution - start) % step
    return list(range(first, hi + 1, step))


def resolution_plan(native: int, lo: int | None = None, hi: int | None = None) -> dict[str, object]:
    """Native and half sizes plus the mod-32 test/fine-tune sizes in ``[lo, hi]`` (JSON-ready).

    ``half`` and ``native`` differ by a multiple of 32, so one list serves both training sizes.
    """
    native = check_resolution(native, "native resolution")
    half = half_resolution(native)
    default_lo, default_hi = default_sweep_range(native)
    lo = default_lo if lo is None else lo
    hi = default_hi if hi is None else hi
    return {
        "native": native,
        "half": half,
        "half_source": "published" if native in PUBLISHED_HALF else "rule",
        "half_rule": half_resolution_rule(native),
        "modulus": downsampling_modulus(),
        "range": [lo, hi],
        "test_resolutions": test_resolutions(native, lo, hi),
    }
