"""Frozen integer CDF tables and the constriction models built from them.

The tables use CompressAI's layout (`_quantized_cdf`, `_cdf_length`, `_offset` buffers of an
`EntropyBottleneck` or `GaussianConditional`, built by their `update()` and frozen in the
checkpoint): table j codes the values v = symbol - offset[j] in 0 .. L_j - 3 with
L_j = cdf_length[j]; value L_j - 2 is an escape, after which the out-of-range symbol follows
(Elias-gamma style, see `SymbolCoder`). Probabilities are integers (16-bit precision), so the
models are identical on every machine.
"""
from __future__ import annotations

from functools import lru_cache

import constriction
import numpy as np
import torch

Categorical = constriction.stream.model.Categorical


class CDFTables:
    """A set of integer CDF tables, indexed 0 .. T-1.

    quantized_cdf: (T, Lmax) int32, row j valid up to cdf_length[j], starting at 0 and ending at 2^16.
    cdf_length: (T,) int32. offset: (T,) int32, the smallest symbol each table codes directly.
    """

    def __init__(self, quantized_cdf: np.ndarray, cdf_length: np.ndarray, offset: np.ndarray) -> None:
        self.cdf = np.asarray(quantized_cdf, dtype=np.int64)
        self.length = np.asarray(cdf_length, dtype=np.int64).reshape(-1)
        self.offset = np.asarray(offset, dtype=np.int64).reshape(-1)
        if self.cdf.ndim != 2 or not (len(self.cdf) == len(self.length) == len(self.offset)):
            raise ValueError("inconsistent CDF table shapes")
        if len(self.length) == 0 or self.length.min() < 3 or self.length.max() > self.cdf.shape[1]:
            raise ValueError("CDF tables are empty or have invalid lengths (was update() run?)")
        self.model = lru_cache(maxsize=None)(self._build_model)

    @classmethod
    def from_module(cls, module: torch.nn.Module) -> "CDFTables":
        """Tables of a CompressAI EntropyBottleneck or GaussianConditional after update()."""
        return cls(
            module._quantized_cdf.cpu().numpy(),
            module._cdf_length.cpu().numpy(),
            module._offset.cpu().numpy(),
        )

    def __len__(self) -> int:
        return len(self.length)

    def escape_value(self, j: int) -> int:
        """The escape value of table j (its last codable value)."""
        return int(self.length[j]) - 2

    def _build_model(self, j: int) -> Categorical:
        row = self.cdf[j, : self.length[j]]
        return Categorical(np.diff(row).astype(np.float64), perfect=False)


class ScaleTable:
    """Chooses a Gaussian table by integer index from a scale (standard deviation).

    bounds: (T,) float64, increasing; the scale s gets the smallest index i with s <= bounds[i]
    (scales above the last bound get T-1, scales below the first get 0, as the lower bound).
    The comparison runs in float64 so tiny device-dependent differences almost never change it.
    """

    def __init__(self, bounds: torch.Tensor) -> None:
        self.bounds = bounds.detach().to(torch.float64).cpu()

    def __len__(self) -> int:
        return len(self.bounds)

    def index(self, scales: torch.Tensor) -> np.ndarray:
        """scales: any shape, float64 -> int64 indices of the same number of elements (flattened)."""
        scales = scales.detach().to(torch.float64).cpu().reshape(-1)
        if not torch.isfinite(scales).all():
            raise ValueError("non-finite scale in the entropy model")
        idx = torch.bucketize(scales, self.bounds, right=False).clamp_(max=len(self.bounds) - 1)
        return idx.numpy().astype(np.int64)
