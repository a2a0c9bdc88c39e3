"""An evaluation's rate-distortion curves side by side: BD-rate and BD-PSNR of our curves against
reference curves (codecs measured in the same run, anchor files), the markdown tables that
``ccacodec eval`` prints, and the RD plot.

A result is one curve in CompressAI's results schema (:func:`cca_codec.measure.evaluate.evaluate`):
``{"name", "description", "results": {"quality", "bpp", "psnr-rgb", ...}, "per_image"}``.
"""
from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cca_codec.base.fileio import atomic_write

from .bdrate import bd_psnr, bd_rate, load_curve

if TYPE_CHECKING:
    from matplotlib.figure import Figure


BD_FILE = "bd-rate.json"
"""Name of the BD-rate table written next to the results."""

Curve = tuple[str, "str | None", list, list]
"""A reference curve: (name, its file or None when measured in this run, bpp, PSNR-RGB in dB)."""


def reference_curves(anchor_paths: Sequence[Path], compared: dict[str, dict] | None = None) -> list[Curve]:
    """The curves ours are compared with: the compared codecs' results, then the anchor files.

    Raises:
        ValueError, OSError: an anchor file that cannot be read as a results JSON.
    """
    measured: list[Curve] = [
        (r["name"], None, r["results"]["bpp"], r["results"]["psnr-rgb"]) for r in (compared or {}).values()
    ]
    anchors: list[Curve] = []
    for path in anchor_paths:
        name, bpp, psnr_db = load_curve(path)
        anchors.append((name, str(path), bpp, psnr_db))
    return measured + anchors


def write_bd_table(rows: list[dict], out_dir: Path) -> Path:
    """Write the rows of :func:`bd_table` to ``out_dir/bd-rate.json``; returns its path."""
    document = {
        "description": "Bjontegaard delta rate (%, negative = our curve needs fewer bits) and delta PSNR "
        "(dB, positive = our curve is better) of each of our curves against each reference curve, "
        "on bpp and PSNR-RGB; anchor_file is null for codecs measured in the same run.",
        "rows": rows,
    }
    path = Path(out_dir) / BD_FILE
    atomic_write(path, (json.dumps(document, indent=2) + "\n").encode())
    return path


def bd_table(results: dict[str, dict], anchor_paths: Sequence[Path], compared: dict[str, dict] | None = None) -> list[dict]:
    """BD-rate and BD-PSNR of each of our curves (bpp, PSNR-RGB) against each compared codec's
    curve (:func:`~cca_codec.measure.evaluate.evaluate_classical`) and each anchor file.

    Returns one row per (context, reference): ``{"context", "curve", "anchor" (the reference
    curve's name), "anchor_file" (None for a codec measured in this run), "bd_rate" (%,
    negative = we need fewer bits), "bd_psnr" (dB, positive = we are better), "note"}``.
    Where a measure cannot be computed (the curves do not overlap, or a curve has fewer
    than 3 points) its value is None and ``note`` says why.

    Raises:
        ValueError, OSError: an anchor file that cannot be read as a results JSON.
    """
    references = reference_curves(anchor_paths, compared)
    rows = []
    for context, result in results.items():
        ours = (result["results"]["bpp"], result["results"]["psnr-rgb"])
        for name, path, bpp, psnr_db in references:
            row: dict = {"context": context, "curve": result["name"], "anchor": name, "anchor_file": path}
            notes = []
            for key, measure in (("bd_rate", bd_rate), ("bd_psnr", bd_psnr)):
                try:
                    row[key] = measure(bpp, psnr_db, *ours)
                except ValueError as exc:
                    row[key] = None
                    notes.append(f"{key}: {exc}")
            row["note"] = "; ".join(notes) or None
            rows.append(row)
    return rows


def plot_rd(results: dict[str, dict], anchor_paths: Sequence[Path], path: Path, compared: dict[str, dict] | None = None) -> None:
    """Save the rate-distortion plot of :func:`rd_figure` (PNG, or any format matplotlib infers from ``path``)."""
    fig = rd_figure(results, anchor_paths, compared)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def rd_svg(results: dict[str, dict], anchor_paths: Sequence[Path], compared: dict[str, dict] | None = None) -> str:
    """The rate-distortion plot of :func:`rd_figure` as an SVG document."""
    buffer = io.StringIO()
    rd_figure(results, anchor_paths, compared).savefig(buffer, format="svg")
    return buffer.getvalue()


def rd_figure(results: dict[str, dict], anchor_paths: Sequence[Path], compared: dict[str, dict] | None = None) -> Figure:
    """A rate-distortion plot: x = bpp, y = PSNR-RGB (dB); our curves solid with markers, compared
    codecs dash-dotted, anchors dashed. The view spans our bitrates (the others clipped to it) so
    that our curves are not squeezed."""
    from matplotlib.figure import Figure  # the optional "eval" extra; Figure draws with Agg, no pyplot state

    fig = Figure(figsize=(8, 6), dpi=120)
    ax = fig.subplots()
    ours = [(r["name"], r["results"]["bpp"], r["results"]["psnr-rgb"]) for r in results.values()]
    references = reference_curves(anchor_paths, compared)
    x_max = 1.15 * max(max(bpp) for _, bpp, _ in ours)
    visible: list[float] = []
    for name, bpp, psnr_db in ours:
        order = np.argsort(bpp)
        ax.plot(np.asarray(bpp)[order], np.asarray(psnr_db)[order], "-o", linewidth=2, label=name)
        visible.extend(psnr_db)
    for name, source, bpp, psnr_db in references:
        order = np.argsort(bpp)
        x, y = np.asarray(bpp)[order], np.asarray(psnr_db)[order]
        line, marker, size = ("--", ".", 6.0) if source is not None else ("-.", "s", 3.5)
        ax.plot(x, y, line, marker=marker, markersize=size, linewidth=1.2, label=name)
        visible.extend(y[x <= x_max])
        if x[0] <= x_max < x[-1]:  # where the line leaves the view
            visible.append(float(np.interp(x_max, x, y)))
    finite = [p for p in visible if math.isfinite(p)]
    margin = 0.05 * (max(finite) - min(finite)) + 0.5
    ax.set_xlim(0.0, x_max)
    ax.set_ylim(min(finite) - margin, max(finite) + margin)
    images = len(next(iter(results.values()))["per_image"])
    ax.set_title(f"Rate-distortion, {images} image{'s' if images != 1 else ''} (PSNR on 8-bit RGB)")
    ax.set_xlabel("bits per pixel (whole file)")
    ax.set_ylabel("PSNR-RGB (dB)")
    ax.grid(True, alpha=0.4)
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    return fig


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown_table(results: dict[str, dict], label: str = "context") -> str:
    """The per-quality averages of every result (context mode, or compared codec: ``label``
    names the first column) as one markdown table; payload bpp is n/a where not measured."""
    lines = [f"| {label} | " + " | ".join(QUALITY_COLUMNS) + " |", "|---|" + "---:|" * len(QUALITY_COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in quality_rows(results)]
    return "\n".join(lines)


QUALITY_COLUMNS = ("quality", "bpp", "payload bpp", "PSNR-RGB (dB)", "MS-SSIM", "SSIMULACRA2", "enc (s)", "dec (s)")
"""The per-quality table's columns after the first (the curve)."""


def quality_rows(results: dict[str, dict]) -> list[list[str]]:
    """The per-quality averages of every result as table cells: its key (the label), then QUALITY_COLUMNS."""
    rows = []
    for key, result in results.items():
        r = result["results"]
        payload = r.get("bpp-payload", [None] * len(r["quality"]))
        for i, q in enumerate(r["quality"]):
            rows.append([
                key, f"{q:g}", _fmt(r["bpp"][i], 4), _fmt(payload[i], 4), _fmt(r["psnr-rgb"][i], 2),
                _fmt(r["ms-ssim-rgb"][i], 4), _fmt(r["ssimulacra2"][i], 2), _fmt(r["encoding_time"][i], 3),
                _fmt(r["decoding_time"][i], 3),
            ])
    return rows


def markdown_bd_table(rows: list[dict]) -> str:
    """Rows of :func:`bd_table` as a markdown table."""
    lines = ["| curve | anchor | BD-rate (%) | BD-PSNR (dB) | note |", "|---|---|---:|---:|---|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in map(bd_cells, rows)]
    return "\n".join(lines)


def bd_cells(row: dict) -> list[str]:
    """A row of :func:`bd_table` as table cells: curve, anchor, BD-rate, BD-PSNR, note."""
    rate = "n/a" if row["bd_rate"] is None else f"{row['bd_rate']:+.2f}"
    gain = "n/a" if row["bd_psnr"] is None else f"{row['bd_psnr']:+.3f}"
    return [row["curve"], row["anchor"], rate, gain, row["note"] or ""]
