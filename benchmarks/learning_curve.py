"""The learning curve of a trained model: Kodak BD-rate, top-quality PSNR and reconstruction ceiling
against the CPU time that went into it, and when the goals would be reached at the recent pace.

    python benchmarks/learning_curve.py [models/cca-compact/TRAINING.md] [--last 5] [--plot curve.png] [--json curve.json]

Reads the stint table of a model's TRAINING.md ("## Background stints", one row per stint, written by
`train-bg finish`): the total CPU minutes (whole-machine minutes, the table's unit), the Kodak top quality's
PSNR (the last point of the Kodak column), the ceiling and the BD-rates against the JPEG and BPG anchors. Each
measure is fitted as a straight line in log2 of the CPU minutes over the last `--last` rows (learning curves are
roughly straight there: so much per doubling of training) and extrapolated to the goals of issue 36: BD-rate vs
BPG at 0 %, the top quality at 38.5 dB, the ceiling at 40 dB (the BD-rate vs JPEG is fitted and drawn without a
goal: issue 23's -45 % is met). The forecast is only as good as the pace of the recent rows; a change of recipe
or a GPU changes it. A measure whose column the table lacks (older logs have no "vs BPG") is left out.

A longer quality table moves the measures by a step of its own (a quality 9 ends the curve higher and adds
a point where the BD-rate is weaker), so the rows are grouped by their table, told apart by the Kodak
cell's point count (q1 / q4 / q8, then the top quality when the table goes above 8): the fit shares one
slope across the groups and gives each its own offset, and the forecast is for the last row's table.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LOG = REPO / "models" / "cca-compact" / "TRAINING.md"
SECTION = "## Background stints"
# measure -> (the stint table's column, what it is, goal or None, whether lower is better)
MEASURES: dict[str, tuple[str, str, float | None, bool]] = {
    "bd_jpeg": ("vs JPEG", "BD-rate vs JPEG (%)", None, True),
    "bd_bpg": ("vs BPG", "BD-rate vs BPG (%)", 0.0, True),
    "top_psnr": ("Kodak", "top quality (dB)", 38.5, False),
    "ceiling": ("ceiling dB", "ceiling (dB)", 40.0, False),
}


@dataclass(frozen=True)
class Stint:
    date: str
    cpu_minutes: float  # total, whole-machine minutes
    bd_jpeg: float  # % against the JPEG anchor
    top_psnr: float  # dB at the top quality
    ceiling: float  # dB
    bd_bpg: float | None = None  # % against the BPG anchor; None where the table has no such column
    table: int = 3  # the Kodak cell's point count: 3 for a table up to quality 8, 4 for one above it


def _cell(cells: dict[str, str], prefix: str) -> str:
    for name, value in cells.items():
        if name.startswith(prefix):
            return value
    raise ValueError(f"no column starting with {prefix!r} in the stint table")


def _optional_number(cells: dict[str, str], prefix: str) -> float | None:
    """The number in the column starting with `prefix`; None when there is no such column or it holds none."""
    try:
        value = _cell(cells, prefix)
    except ValueError:
        return None
    return float(value) if re.fullmatch(r"[+-]?[\d.]+", value) else None


def read_stints(path: Path) -> list[Stint]:
    """The rows of the stint table that report a ceiling, in the order written."""
    lines = path.read_text().splitlines()
    try:
        start = lines.index(SECTION)
    except ValueError:
        raise ValueError(f"{path}: no {SECTION!r} section") from None
    header: list[str] | None = None
    stints = []
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if not line.startswith("|"):
            if header is not None and stints:
                break  # the end of the table
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        if set(cells[0]) <= set("-: "):
            continue  # the alignment row
        row = dict(zip(header, cells))
        total = re.search(r"\(([\d,.]+)\)", _cell(row, "CPU min"))
        top = re.findall(r"@ ([\d.]+)", _cell(row, MEASURES["top_psnr"][0]))
        ceiling = _cell(row, MEASURES["ceiling"][0])
        if not (total and top and re.fullmatch(r"[\d.]+", ceiling)):
            continue
        stints.append(Stint(row[header[0]], float(total.group(1).replace(",", "")), float(_cell(row, MEASURES["bd_jpeg"][0])),
                            float(top[-1]), float(ceiling), _optional_number(row, MEASURES["bd_bpg"][0]), len(top)))
    if not stints:
        raise ValueError(f"{path}: no stint rows with a CPU total, a Kodak curve and a ceiling")
    return stints


def forecast(stints: list[Stint], last: int) -> dict[str, dict]:
    """Per measure the last `last` rows all report: the line fitted over them (value = intercept +
    per_doubling * log2(CPU minutes), with one slope for all rows and an offset for each quality table
    other than the last row's; `intercept` is the last row's table's) and, for a measure with a goal, the
    total CPU minutes at which it meets it (the last row's when that already has; None when the line moves
    away from it)."""
    rows = stints[-last:]
    others = sorted({s.table for s in rows} - {rows[-1].table})
    if len(rows) < 2 + len(others):
        raise ValueError(f"the fit needs at least {2 + len(others)} rows (a slope, and an offset for each of {1 + len(others)} quality tables)")
    log_minutes = np.log2([s.cpu_minutes for s in rows])
    design = np.column_stack([log_minutes, np.ones(len(rows))] + [[float(s.table == t) for s in rows] for t in others])
    out = {}
    for name, (_, _, goal, lower_is_better) in MEASURES.items():
        column = [getattr(s, name) for s in rows]
        if any(v is None for v in column):
            continue
        values = np.array(column, dtype=float)
        slope, intercept = np.linalg.lstsq(design, values, rcond=None)[0][:2]
        at = None
        if goal is not None:
            improving = slope < 0 if lower_is_better else slope > 0
            reached = (values[-1] <= goal) if lower_is_better else (values[-1] >= goal)
            if reached:
                at = rows[-1].cpu_minutes
            elif improving:
                at = float(2 ** ((goal - intercept) / slope))
        out[name] = {"goal": goal, "now": float(values[-1]), "per_doubling": round(float(slope), 3), "intercept": float(intercept),
                     "cpu_minutes_at_goal": None if at is None else round(at, 1)}
    return out


def markdown(stints: list[Stint], fits: dict[str, dict], last: int) -> str:
    lines = ["| date | CPU min (total) | Kodak points | vs JPEG % | vs BPG % | top quality dB | ceiling dB |", "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {s.date} | {s.cpu_minutes:,.1f} | {s.table} | {s.bd_jpeg:+.1f} | {'-' if s.bd_bpg is None else f'{s.bd_bpg:+.1f}'} "
              f"| {s.top_psnr:.2f} | {s.ceiling:.2f} |" for s in stints]
    rows = stints[-last:]
    tables = "" if len({s.table for s in rows}) == 1 else f" (one offset per quality table; the forecast is for the last row's, {rows[-1].table} Kodak points)"
    lines += ["", f"Fitted over the last {len(rows)} rows, linear in log2(CPU minutes){tables}:", "",
              "| measure | now | goal | per doubling of CPU minutes | CPU min (total) at the goal |", "|---|---:|---:|---:|---:|"]
    for name, f in fits.items():
        if f["goal"] is None:
            goal = at = "-"
        else:
            goal = f"{f['goal']:g}"
            at = "never at this pace" if f["cpu_minutes_at_goal"] is None else f"{f['cpu_minutes_at_goal']:,.0f}"
        lines.append(f"| {MEASURES[name][1]} | {f['now']:g} | {goal} | {f['per_doubling']:+.2f} | {at} |")
    return "\n".join(lines)


def plot(stints: list[Stint], fits: dict[str, dict], last: int, path: Path) -> None:
    """One panel per fitted measure against CPU hours (log scale), with the stints that report it, the
    fitted line and the goal."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    fig = Figure(figsize=(4 * len(fits), 3.6))
    for i, (name, f) in enumerate(fits.items()):
        _, label, goal, _ = MEASURES[name]
        ax = fig.add_subplot(1, len(fits), i + 1)
        shown = [s for s in stints if getattr(s, name) is not None]
        hours = np.array([s.cpu_minutes / 60 for s in shown])
        ax.plot(hours, [getattr(s, name) for s in shown], "o-", label="stints")
        end = max(hours[-1], (f["cpu_minutes_at_goal"] or 0) / 60) * 1.1
        xs = np.geomspace(stints[-min(last, len(stints))].cpu_minutes / 60, end, 50)
        ax.plot(xs, f["intercept"] + f["per_doubling"] * np.log2(xs * 60), "--", label="fit")
        if goal is not None:
            ax.axhline(goal, color="grey", linestyle=":", label=f"goal {goal:g}")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator([1, 2, 3, 5, 10, 20, 30, 50, 100]))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("CPU hours (whole machine)")
        ax.set_title(label)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("log", nargs="?", type=Path, default=DEFAULT_LOG, help="a model's TRAINING.md")
    p.add_argument("--last", type=int, default=5, help="rows the fit uses (the most recent)")
    p.add_argument("--plot", type=Path, default=None, help="write the curves as an image (PNG)")
    p.add_argument("--json", type=Path, default=None, help="write the rows and the fits as JSON")
    a = p.parse_args(argv)
    try:
        stints = read_stints(a.log)
        fits = forecast(stints, a.last)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(markdown(stints, fits, a.last))
    if a.plot:
        plot(stints, fits, a.last, a.plot)
    if a.json:
        a.json.write_text(json.dumps({"stints": [asdict(s) for s in stints], "last": a.last, "fits": fits}, indent=2) + "\n")


if __name__ == "__main__":
    main()
