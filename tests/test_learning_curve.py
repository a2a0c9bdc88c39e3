"""benchmarks/learning_curve.py: the stint table read back, the log-linear fit and its forecast."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from learning_curve import DEFAULT_LOG, forecast, read_stints  # noqa: E402

HEADER = ("| date | steps (total) | CPU min (total) | wall min | recipe | Kodak q1 / q4 / q8 bpp @ dB | ceiling dB | top step dB "
          "| vs JPEG | vs VTM | committed |\n|---|---:|---:|---:|---|---|---:|---:|---:|---:|---|\n")
"""The table before it had a "vs BPG" column; `row(..., bpg=...)` writes today's, which has one."""
HEADER_BPG = HEADER.replace("| vs VTM |", "| vs VTM | vs BPG |").replace("|---:|---|\n", "|---:|---:|---|\n")


def row(date, total, top, ceiling, jpeg, above=None, bpg=None):
    """A stint row; `above`: the PSNR of a quality above 8, which ends the Kodak cell; `bpg`: the
    "vs BPG" cell, for a log with that column."""
    kodak = f"0.2 @ 20.00 / 0.5 @ 25.00 / 1.3 @ {top:.2f}" + ("" if above is None else f" / 1.6 @ {above:.2f}")
    return f"| {date} | 10 (20) | 5.0 ({total:,}) | 9 | r | {kodak} | {ceiling} | +0.1 | {jpeg} | +3 |" + ("" if bpg is None else f" {bpg} |") + " yes |\n"


def write_log(path: Path, rows: str, header: str = HEADER) -> Path:
    path.write_text("# m\n\n## Background stints\n\nSome words.\n\n" + header + rows
                    + "\nAfter the table.\n\n## Later\n\n| date | CPU min (total) |\n|---|---|\n| x | 1 (2) |\n")
    return path


def test_a_log_linear_curve_is_forecast_exactly(tmp_path):
    """Per doubling of CPU minutes: -8 % BD-rate against JPEG, -10 against BPG, +0.5 dB at the top, +1 dB
    of ceiling. Against BPG the goal is 0 %, the top's 38.5 dB, the ceiling's 40 dB; JPEG's has none."""
    rows = row("a", 100, 30.0, "30.00", "-10.0", bpg="+50.0") + row("b", 200, 30.5, "-", "-14.0", bpg="+45.0") \
        + row("c", 200, 30.5, "31.00", "-18.0", bpg="+40.0") + row("d", 400, 31.0, "32.00", "-26.0", bpg="+30.0")
    stints = read_stints(write_log(tmp_path / "TRAINING.md", rows, HEADER_BPG))
    assert [s.date for s in stints] == ["a", "c", "d"]  # no ceiling, no row; nothing from the later section
    assert stints[-1].cpu_minutes == 400 and stints[-1].top_psnr == 31.0 and stints[-1].bd_jpeg == -26.0 and stints[-1].bd_bpg == 30.0
    fits = forecast(stints, last=5)
    assert fits["bd_jpeg"]["per_doubling"] == pytest.approx(-8.0) and fits["bd_jpeg"]["cpu_minutes_at_goal"] is None
    assert fits["bd_bpg"]["per_doubling"] == pytest.approx(-10.0)
    assert fits["bd_bpg"]["cpu_minutes_at_goal"] == pytest.approx(400 * 2 ** 3, abs=0.05)  # rounded to 0.1 minute
    assert fits["ceiling"]["cpu_minutes_at_goal"] == pytest.approx(400 * 2 ** 8, abs=0.05)
    assert fits["top_psnr"]["cpu_minutes_at_goal"] == pytest.approx(400 * 2 ** 15, abs=0.05)
    # only the last two rows: the same slopes; a goal already met is met at the last row; a curve going
    # the wrong way never reaches it
    reached = forecast(read_stints(write_log(tmp_path / "met.md", row("a", 100, 38.0, "30.00", "-40.0", bpg="+5.0")
                                             + row("b", 200, 38.5, "29.00", "-50.0", bpg="-1.0"), HEADER_BPG)), 2)
    assert reached["bd_bpg"]["cpu_minutes_at_goal"] == 200 and reached["top_psnr"]["cpu_minutes_at_goal"] == 200
    assert reached["ceiling"]["cpu_minutes_at_goal"] is None


def test_a_log_without_the_bpg_column_is_fitted_without_that_measure(tmp_path):
    log = write_log(tmp_path / "old.md", row("a", 100, 30.0, "30.00", "-10.0") + row("b", 200, 30.5, "31.00", "-18.0"))
    stints = read_stints(log)
    assert [s.bd_bpg for s in stints] == [None, None]
    fits = forecast(stints, last=5)
    assert sorted(fits) == ["bd_jpeg", "ceiling", "top_psnr"]
    done = subprocess.run([sys.executable, str(BENCHMARKS / "learning_curve.py"), str(log), "--plot", str(tmp_path / "old.png")],
                          capture_output=True, text=True, check=True)
    assert "BD-rate vs BPG" not in done.stdout and "| - | -8.00 | - |" in done.stdout and (tmp_path / "old.png").stat().st_size > 0


def test_the_command_reads_the_shipped_log_and_refuses_a_file_without_the_table(tmp_path):
    done = subprocess.run([sys.executable, str(BENCHMARKS / "learning_curve.py"), str(DEFAULT_LOG), "--json", str(tmp_path / "c.json"),
                           "--plot", str(tmp_path / "c.png")], capture_output=True, text=True, check=True)
    assert "| ceiling (dB) |" in done.stdout and "| BD-rate vs BPG (%) |" in done.stdout and (tmp_path / "c.png").stat().st_size > 0
    assert len(read_stints(DEFAULT_LOG)) >= 10
    (tmp_path / "bare.md").write_text("# nothing\n")
    refused = subprocess.run([sys.executable, str(BENCHMARKS / "learning_curve.py"), str(tmp_path / "bare.md")], capture_output=True, text=True)
    assert refused.returncode == 1 and refused.stderr.strip() == f"error: {tmp_path / 'bare.md'}: no '## Background stints' section"


def test_a_longer_quality_table_gets_its_own_offset_and_the_same_slope(tmp_path):
    """Rows on a table up to quality 9 sit 0.5 dB higher at the top and 1 point worse against JPEG than
    the q1-8 line; the fit keeps the q1-8 rows' slope and forecasts along the q9 table's line."""
    rows = row("a", 100, 30.0, "30.00", "-10.0") + row("b", 200, 30.5, "31.00", "-18.0") \
        + row("c", 400, 30.5, "32.00", "-25.0", above=31.5) + row("d", 800, 31.0, "33.00", "-33.0", above=32.0)
    stints = read_stints(write_log(tmp_path / "TRAINING.md", rows))
    assert [s.table for s in stints] == [3, 3, 4, 4] and stints[-1].top_psnr == 32.0
    fits = forecast(stints, last=5)
    assert fits["bd_jpeg"]["per_doubling"] == pytest.approx(-8.0) and fits["top_psnr"]["per_doubling"] == pytest.approx(0.5)
    assert fits["ceiling"]["per_doubling"] == pytest.approx(1.0)
    assert fits["top_psnr"]["cpu_minutes_at_goal"] == pytest.approx(800 * 2 ** 13, abs=0.05)
    # a plain line through all four rows would have mixed the step into the slope
    assert float(np.polyfit(np.log2([100, 200, 400, 800]), [-10, -18, -25, -33], 1)[0]) != pytest.approx(-8.0)
    with pytest.raises(ValueError, match="at least 3 rows"):
        forecast(stints[1:3], last=5)
