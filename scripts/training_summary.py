"""Summarise training logs (log.jsonl of `ccacodec train`) as a markdown table for TRAINING.md.

    python scripts/training_summary.py runs/cpu1/log.jsonl runs/cpu2/log.jsonl --bin 250

Records from several logs (chunks of one run) are merged by step; a later log wins for a step
logged twice. Each row averages the records of one bin of steps: loss, bpp and PSNR of the
training batches (mixed qualities, so they are trends, not operating points), the CCA term,
the auxiliary model's bits per element and the learning rate at the bin's end.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def read_logs(paths: list[Path]) -> list[dict]:
    """Every record of the logs, one per step, sorted by step."""
    by_step: dict[int, dict] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                by_step[rec["step"]] = rec
    return [by_step[s] for s in sorted(by_step)]


def summary_table(records: list[dict], bin_steps: int) -> str:
    """Markdown table, one row per `bin_steps` steps."""
    rows = ["| steps | minutes | loss | bpp | PSNR dB | CCA term | aux bits/elem | lr at end |", "|---|---|---|---|---|---|---|---|"]
    bins: dict[int, list[dict]] = {}
    for rec in records:
        bins.setdefault((rec["step"] - 1) // bin_steps, []).append(rec)
    for index in sorted(bins):
        group = bins[index]
        mean = {k: statistics.fmean(r[k] for r in group) for k in ("loss", "bpp", "mse_psnr", "cca", "aux_bits_per_element")}
        last = group[-1]
        rows.append(
            f"| {group[0]['step']}-{last['step']} | {last.get('minutes', 0):.0f} | {mean['loss']:.2f} | {mean['bpp']:.3f} "
            f"| {mean['mse_psnr']:.2f} | {mean['cca']:.2f} | {mean['aux_bits_per_element']:.2f} | {last['lr']:.1e} |"
        )
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", nargs="+", type=Path)
    p.add_argument("--bin", type=int, default=250, help="steps per row")
    a = p.parse_args()
    print(summary_table(read_logs(a.logs), a.bin))


if __name__ == "__main__":
    main()
