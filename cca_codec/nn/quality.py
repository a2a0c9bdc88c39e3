"""The quality table: one rate-distortion operating point per integer quality.

Training loss per quality (DESIGN.md section 1):
    L = d * 255^2 * MSE + beta * R + alpha * L_CCA + L_aux2,
so the y rate weighs beta + 1 and the CompressAI-style lambda (L = R + lambda * 255^2 * MSE)
is d / (beta + 1). Qualities 1..6 are the paper's betas with d = 0.05; 7 and 8 keep beta = 0.3
and raise d to reach about 1.0 and 1.5 bpp.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class QualityPoint:
    """One operating point: `beta` weighs the rate, `distortion_weight` (d) the MSE term."""

    quality: int
    beta: float
    distortion_weight: float = 0.05

    @property
    def lam(self) -> float:
        """Equivalent CompressAI lambda, d / (beta + 1)."""
        return self.distortion_weight / (self.beta + 1.0)

    def to_dict(self) -> dict:
        return {**asdict(self), "lambda": self.lam}


DEFAULT_QUALITIES: tuple[QualityPoint, ...] = (
    QualityPoint(1, 15.0),
    QualityPoint(2, 7.0),
    QualityPoint(3, 3.5),
    QualityPoint(4, 1.8),
    QualityPoint(5, 0.85),
    QualityPoint(6, 0.3),
    QualityPoint(7, 0.3, 0.091),
    QualityPoint(8, 0.3, 0.169),
)


def quality_table_from_dicts(entries: list[dict]) -> tuple[QualityPoint, ...]:
    """Rebuild a quality table from `model.json` entries (the derived 'lambda' is ignored)."""
    return tuple(QualityPoint(int(e["quality"]), float(e["beta"]), float(e["distortion_weight"])) for e in entries)
