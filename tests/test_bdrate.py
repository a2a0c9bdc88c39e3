"""Bjontegaard delta rate / PSNR: exact cases, error cases, and the published anchors."""
import json
from pathlib import Path

import numpy as np
import pytest

from cca_codec.measure.bdrate import bd_psnr, bd_rate, load_curve

ANCHORS = Path("/work/shared/anchors")
RATE = [0.1, 0.25, 0.5, 0.9, 1.5]
PSNR = [28.0, 31.0, 34.0, 36.5, 39.0]


def test_identical_curves_give_zero():
    assert bd_rate(RATE, PSNR, RATE, PSNR) == pytest.approx(0.0, abs=1e-9)
    assert bd_psnr(RATE, PSNR, RATE, PSNR) == pytest.approx(0.0, abs=1e-9)


def test_halved_rate_is_minus_50_percent():
    assert bd_rate(RATE, PSNR, [r / 2 for r in RATE], PSNR) == pytest.approx(-50.0, abs=1e-6)


def test_doubled_rate_is_plus_100_percent():
    assert bd_rate(RATE, PSNR, [r * 2 for r in RATE], PSNR) == pytest.approx(100.0, abs=1e-6)


def test_point_order_does_not_matter():
    order = [3, 0, 4, 1, 2]
    shuffled = ([RATE[i] * 2 for i in order], [PSNR[i] for i in order])
    assert bd_rate(RATE, PSNR, *shuffled) == pytest.approx(100.0, abs=1e-6)


def test_shifted_psnr_gives_that_bd_psnr():
    """The same curve 0.5 dB higher: +0.5 dB at equal rate, and a rate saving."""
    better = [p + 0.5 for p in PSNR]
    assert bd_psnr(RATE, PSNR, RATE, better) == pytest.approx(0.5, abs=1e-9)
    assert bd_psnr(RATE, better, RATE, PSNR) == pytest.approx(-0.5, abs=1e-9)
    assert bd_rate(RATE, PSNR, RATE, better) < 0


def test_bd_psnr_of_a_known_log_linear_curve():
    """PSNR = 6 log2(rate) + c: halving every rate costs exactly 6 dB at equal rate."""
    rate = np.array([0.125, 0.25, 0.5, 1.0, 2.0])
    psnr = 6.0 * np.log2(rate) + 35.0
    assert bd_psnr(rate, psnr, rate / 2, psnr) == pytest.approx(6.0, abs=1e-9)


def test_three_points_use_a_quadratic_and_fewer_are_refused():
    assert bd_rate(RATE[:3], PSNR[:3], [r / 2 for r in RATE[:3]], PSNR[:3]) == pytest.approx(-50.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 3"):
        bd_rate(RATE[:2], PSNR[:2], RATE, PSNR)


@pytest.mark.filterwarnings("error")
def test_repeated_values_lower_the_degree_and_two_distinct_are_refused():
    """Two qualities with the same file size: a quadratic through the three distinct rates, no RankWarning."""
    rate, psnr = [0.1, 0.25, 0.5, 0.5], [28.0, 31.0, 34.0, 34.2]
    assert bd_psnr(rate, psnr, rate, [p + 0.5 for p in psnr]) == pytest.approx(0.5, abs=1e-9)
    with pytest.raises(ValueError, match="only 2 distinct rate values"):
        bd_psnr(RATE, PSNR, [0.4, 0.4, 0.5], [6.6, 6.7, 6.8])
    with pytest.raises(ValueError, match="only 2 distinct PSNR values"):
        bd_rate([0.4, 0.5, 0.6], [30.0, 30.0, 31.0], RATE, PSNR)


@pytest.mark.filterwarnings("error")
def test_points_close_together_fit_without_a_rank_warning():
    """Five points within 0.004 dB of 40 dB: a cubic in raw PSNR would be ill-conditioned."""
    rate = [1.0, 1.001, 1.002, 1.003, 1.004]
    psnr = [40.0, 40.001, 40.002, 40.003, 40.004]
    assert bd_rate(rate, psnr, [r / 2 for r in rate], psnr) == pytest.approx(-50.0, abs=1e-6)


def test_non_overlapping_curves_are_refused():
    higher = [p + 20.0 for p in PSNR]
    with pytest.raises(ValueError, match="do not overlap in PSNR"):
        bd_rate(RATE, PSNR, RATE, higher)
    with pytest.raises(ValueError, match="do not overlap in rate"):
        bd_psnr(RATE, PSNR, [r * 100 for r in RATE], PSNR)


def test_invalid_curves_are_refused():
    with pytest.raises(ValueError, match="rate <= 0"):
        bd_rate([0.0, *RATE[1:]], PSNR, RATE, PSNR)
    with pytest.raises(ValueError, match="4 rates but 5"):
        bd_rate(RATE[:4], PSNR, RATE, PSNR)
    with pytest.raises(ValueError, match="non-finite"):
        bd_rate(RATE, [float("nan"), *PSNR[1:]], RATE, PSNR)


def test_load_curve_accepts_both_psnr_keys(tmp_path):
    a = tmp_path / "a.json"
    a.write_text(json.dumps({"name": "A", "results": {"bpp": RATE, "psnr-rgb": PSNR}}))
    b = tmp_path / "b.json"
    b.write_text(json.dumps({"results": {"bpp": RATE, "psnr": PSNR}}))
    assert load_curve(a) == ("A", RATE, PSNR)
    assert load_curve(b) == ("b", RATE, PSNR)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"results": {"bpp": RATE}}))
    with pytest.raises(ValueError, match="no PSNR"):
        load_curve(bad)


@pytest.mark.skipif(not ANCHORS.is_dir(), reason="shared anchors not available")
def test_real_anchors_bpg_against_vtm():
    """The anchors README says BPG is about +27 % over VTM; the full overlapping range gives 22 %."""
    _, rate_vtm, psnr_vtm = load_curve(ANCHORS / "kodak_vtm.json")
    _, rate_bpg, psnr_bpg = load_curve(ANCHORS / "kodak_bpg_444_x265_ycbcr.json")
    assert 20.0 <= bd_rate(rate_vtm, psnr_vtm, rate_bpg, psnr_bpg) <= 35.0
    assert bd_psnr(rate_vtm, psnr_vtm, rate_bpg, psnr_bpg) < 0
    assert bd_rate(rate_vtm, psnr_vtm, rate_vtm, psnr_vtm) == pytest.approx(0.0, abs=1e-9)
