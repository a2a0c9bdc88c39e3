"""Where decodings of one image differ most: the windows that `ccacodec compare` crops and
`ccacodec eval --html` shows, so that a reader looks where the codecs disagree."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def differing_regions(
    reference: np.ndarray, decodings: Sequence[np.ndarray], count: int, side: int
) -> list[tuple[tuple[int, int, int], float]]:
    """The ``count`` square windows of ``side`` pixels where the decodings' errors differ most.

    Each decoding's squared error against ``reference`` ((H, W, 3) uint8 arrays) is averaged over
    blocks of ``side``/2 pixels; a block's spread is the max minus the min of that MSE over the
    decodings (one decoding: its MSE). Windows are centred on the blocks of largest spread, kept
    inside the image and not overlapping an earlier window.

    Returns:
        [((left, top, side), spread), ...], largest spread first (fewer when the image is small).
    """
    height, width = reference.shape[:2]
    side = max(1, min(side, height, width))
    block = max(1, side // 2)
    rows, cols = max(1, height // block), max(1, width // block)
    ref = reference.astype(np.float32)
    maps = []
    for rgb in decodings:
        error = ((rgb.astype(np.float32) - ref) ** 2).mean(axis=2)[: rows * block, : cols * block]
        maps.append(error.reshape(rows, block, cols, block).mean(axis=(1, 3)))
    stack = np.stack(maps)
    spread = stack.max(axis=0) - (stack.min(axis=0) if len(maps) > 1 else 0.0)
    chosen: list[tuple[tuple[int, int, int], float]] = []
    for flat in np.argsort(spread, axis=None)[::-1]:
        r, c = divmod(int(flat), cols)
        left = int(np.clip(c * block + block // 2 - side // 2, 0, width - side))
        top = int(np.clip(r * block + block // 2 - side // 2, 0, height - side))
        if all(abs(left - l0) >= side or abs(top - t0) >= side for (l0, t0, _), _ in chosen):
            chosen.append(((left, top, side), float(spread[r, c])))
        if len(chosen) == count:
            break
    return chosen
