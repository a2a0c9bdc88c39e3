"""Bjontegaard delta rate and delta PSNR between two rate-distortion curves (numpy only).

A curve is a list of operating points, rate (any positive unit, e.g. bits per pixel) and
PSNR (dB). Each curve is fitted with a cubic polynomial (a quadratic when it has exactly
three distinct values on the fitted axis) and the two fits are integrated over the interval
where both curves have data, as in VCEG-M33 and CompressAI's ``compressai.utils.bench``:

* :func:`bd_rate` fits log(rate) as a function of PSNR and returns the average rate
  difference of the test curve against the anchor in percent (negative = test saves bits).
* :func:`bd_psnr` fits PSNR as a function of log(rate) and returns the average PSNR
  difference in dB (positive = test is better).

:func:`load_curve` reads a curve from a JSON file in CompressAI's results schema.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

MIN_POINTS = 3
"""Fewest operating points, and distinct values on the fitted axis, a curve needs (a quadratic fit);
four or more distinct values get a cubic."""

PSNR_KEYS = ("psnr-rgb", "psnr")
"""Keys a CompressAI-schema ``results`` object may hold the PSNR (dB) under, in order of preference."""


def _curve(rate: Sequence[float], psnr: Sequence[float], label: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate one curve: (log rate, PSNR in dB) as float64 arrays."""
    r = np.asarray(rate, dtype=np.float64).reshape(-1)
    p = np.asarray(psnr, dtype=np.float64).reshape(-1)
    if r.size != p.size:
        raise ValueError(f"{label} curve has {r.size} rates but {p.size} PSNR values")
    if r.size < MIN_POINTS:
        raise ValueError(f"{label} curve has {r.size} points; the Bjontegaard fit needs at least {MIN_POINTS}")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(p))):
        raise ValueError(f"{label} curve has non-finite rates or PSNR values")
    if np.any(r <= 0):
        raise ValueError(f"{label} curve has a rate <= 0; rates must be positive (the fit uses log rate)")
    return np.log(r), p


def _average_difference(
    x_anchor: np.ndarray, y_anchor: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, axis: str
) -> float:
    """Mean of (fit of y_test - fit of y_anchor) over the overlap of the two x ranges.

    Each fit is a least-squares polynomial in x of degree 3, or 2 for a curve with exactly
    three distinct x values; a curve with fewer distinct x values (two qualities that gave the
    same PSNR, or the same file size) has no such fit and is refused. The fit maps each curve's
    x range onto [-1, 1] first (numpy's ``Polynomial.fit``): the same polynomial as a fit in
    raw x, without the ill-conditioning of cubing PSNR values near 40 dB.
    """
    degrees = []
    for label, x in (("anchor", x_anchor), ("test", x_test)):
        distinct = np.unique(x).size
        if distinct < MIN_POINTS:
            raise ValueError(
                f"{label} curve has only {distinct} distinct {axis} values; "
                f"the Bjontegaard fit needs at least {MIN_POINTS}"
            )
        degrees.append(min(3, distinct - 1))
    low = max(x_anchor.min(), x_test.min())
    high = min(x_anchor.max(), x_test.max())
    if not high > low:
        raise ValueError(
            f"the curves do not overlap in {axis}: anchor covers "
            f"[{x_anchor.min():.4g}, {x_anchor.max():.4g}], test covers [{x_test.min():.4g}, {x_test.max():.4g}]"
        )
    integrals = []
    for x, y, degree in ((x_anchor, y_anchor, degrees[0]), (x_test, y_test, degrees[1])):
        antiderivative = np.polynomial.Polynomial.fit(x, y, degree).integ()
        integrals.append(antiderivative(high) - antiderivative(low))
    return float((integrals[1] - integrals[0]) / (high - low))


def bd_rate(
    rate_anchor: Sequence[float],
    psnr_anchor: Sequence[float],
    rate_test: Sequence[float],
    psnr_test: Sequence[float],
) -> float:
    """Bjontegaard delta rate of the test curve against the anchor, in percent.

    Rates in any common positive unit (bpp, bytes ...), PSNR in dB; points in any order.
    -50.0 means the test codec needs half the rate of the anchor at equal PSNR, averaged
    (in the log domain) over the PSNR interval both curves cover.

    Raises:
        ValueError: a curve with fewer than 3 points (or fewer than 3 distinct PSNR
            values), mismatched lengths, non-finite values or a rate <= 0, or curves
            whose PSNR ranges do not overlap.
    """
    log_ra, pa = _curve(rate_anchor, psnr_anchor, "anchor")
    log_rt, pt = _curve(rate_test, psnr_test, "test")
    mean_log_ratio = _average_difference(pa, log_ra, pt, log_rt, "PSNR")
    return float((np.exp(mean_log_ratio) - 1.0) * 100.0)


def bd_psnr(
    rate_anchor: Sequence[float],
    psnr_anchor: Sequence[float],
    rate_test: Sequence[float],
    psnr_test: Sequence[float],
) -> float:
    """Bjontegaard delta PSNR of the test curve against the anchor, in dB.

    The average PSNR difference (test minus anchor) at equal rate over the log-rate
    interval both curves cover; positive means the test codec is better.

    Raises:
        ValueError: as :func:`bd_rate`, with the distinct values and the overlap taken
            over rate instead of PSNR.
    """
    log_ra, pa = _curve(rate_anchor, psnr_anchor, "anchor")
    log_rt, pt = _curve(rate_test, psnr_test, "test")
    return _average_difference(log_ra, pa, log_rt, pt, "rate")


def load_curve(path: str | os.PathLike[str]) -> tuple[str, list[float], list[float]]:
    """Read ``(name, bpp, PSNR in dB)`` from a CompressAI-schema results JSON file.

    The file holds ``{"name": ..., "results": {"bpp": [...], "psnr-rgb": [...]}}``; the PSNR
    may be stored as ``"psnr"`` instead. A file without ``"name"`` is named by its stem.

    Raises:
        ValueError: the file is not JSON, or lacks ``results.bpp`` or a PSNR list, or
            the two lists differ in length.
        OSError: the file cannot be read.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not a JSON file ({exc})") from None
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, dict) or "bpp" not in results:
        raise ValueError(f"{p}: no results.bpp (expected CompressAI's results schema)")
    key = next((k for k in PSNR_KEYS if k in results), None)
    if key is None:
        raise ValueError(f"{p}: no PSNR in results (looked for {' or '.join(PSNR_KEYS)})")
    bpp = [float(v) for v in results["bpp"]]
    psnr = [float(v) for v in results[key]]
    if len(bpp) != len(psnr):
        raise ValueError(f"{p}: results.bpp has {len(bpp)} values but results.{key} has {len(psnr)}")
    return str(data.get("name") or p.stem), bpp, psnr
