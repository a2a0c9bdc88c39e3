"""The tile grid of large images, and the blending that hides the seams between tiles.

An image of H x W pixels is cut into a grid of *core* tiles of ``tile_height`` x
``tile_width`` pixels (the last row and column may be smaller), numbered row-major as the
``.cca`` container numbers its CDAT chunks. Each tile is coded over its core *extended by
``overlap`` pixels* on every side that has a neighbour (clipped to the image), so
neighbouring tiles code a band of ``2 * overlap`` pixels twice. On decoding, the two
reconstructions of such a band are cross-faded with linear weights; the weights of all
tiles covering a pixel sum to 1, so a pixel inside a core (away from bands) is exactly
its tile's reconstruction.

Memory: :class:`BlendAssembler` keeps the uint8 output image and a float32 strip of one
tile row (``(tile_height + 2 * overlap) x W x 3``), never a float copy of the whole image.
The rules a layout must follow are format rules (docs/FORMAT.md, checked in
:mod:`cca_codec.format.contents`); this module only computes with them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .contents import MAX_TILE_PIXELS, Header, padded_tile_extent

__all__ = [
    "DEFAULT_TILE",
    "DEFAULT_OVERLAP",
    "AUTO_TILE_PIXELS",
    "TileLayout",
    "choose_layout",
    "BlendAssembler",
]

DEFAULT_TILE = 1024
"""Core tile size in pixels chosen automatically (a multiple of the network's 64)."""
DEFAULT_OVERLAP = 16
"""Pixels each tile extends past its core on every side with a neighbour."""
AUTO_TILE_PIXELS = 1 << 21
"""Images with more pixels than this (about 2.1 MP) are tiled automatically."""

Region = tuple[slice, slice]
"""(rows, columns) of a rectangle of the image, in pixels."""


@dataclass(frozen=True)
class TileLayout:
    """A tile grid over an ``height`` x ``width`` image (all sizes in pixels).

    ``tile_height`` x ``tile_width`` is the core tile size (equal to the image size on an
    axis that has one tile), ``overlap`` the extension of each tile towards its neighbours.
    """

    height: int
    width: int
    tile_height: int
    tile_width: int
    overlap: int

    @classmethod
    def from_header(cls, header: Header) -> TileLayout:
        """The layout a (validated) container header describes."""
        return cls(header.height, header.width, header.tile_height, header.tile_width, header.tile_overlap)

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the grid."""
        return -(-self.height // self.tile_height), -(-self.width // self.tile_width)

    @property
    def count(self) -> int:
        """Number of tiles, rows * cols."""
        rows, cols = self.grid
        return rows * cols

    def extent(self, index: int) -> Region:
        """The region tile ``index`` is coded over: its core plus the overlap, clipped."""
        row, col = divmod(index, self.grid[1])
        return (
            _extended(row, self.tile_height, self.height, self.overlap),
            _extended(col, self.tile_width, self.width, self.overlap),
        )

    def weights(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Blending weights of tile ``index`` over its extent: (rows (h,), cols (w,)) float32.

        The weight of a pixel is the product of the two; it ramps linearly across every band
        shared with a neighbour and is 1 elsewhere.
        """
        row, col = divmod(index, self.grid[1])
        rows, cols = self.extent(index)
        return (
            _ramp(rows, row * self.tile_height, self.tile_height, self.height, self.overlap),
            _ramp(cols, col * self.tile_width, self.tile_width, self.width, self.overlap),
        )


def _extended(position: int, size: int, total: int, overlap: int) -> slice:
    """Core ``[position*size, (position+1)*size)`` grown by ``overlap`` and clipped to ``[0, total)``."""
    start = position * size
    return slice(max(0, start - overlap), min(total, start + size + overlap))


def _ramp(span: slice, core_start: int, size: int, total: int, overlap: int) -> np.ndarray:
    """1-D weights over ``span`` for a core starting at ``core_start``.

    At a boundary b shared with a neighbour, the band is [b - overlap, b + overlap); the
    later tile's weight there is (x - (b - overlap) + 0.5) / (2 * overlap), the earlier
    tile's weight one minus that, so the two always sum to 1.
    """
    x = np.arange(span.start, span.stop, dtype=np.float64) + 0.5
    weight = np.ones_like(x)
    if overlap:
        core_end = core_start + size
        if core_start > 0:
            weight = np.minimum(weight, (x - (core_start - overlap)) / (2 * overlap))
        if core_end < total:
            weight = np.minimum(weight, 1.0 - (x - (core_end - overlap)) / (2 * overlap))
    return np.clip(weight, 0.0, 1.0).astype(np.float32)


def choose_layout(height: int, width: int, tile: int | None, align: int) -> TileLayout:
    """The layout to encode a ``height`` x ``width`` image with.

    ``tile``: None = automatic (:data:`DEFAULT_TILE` above :data:`AUTO_TILE_PIXELS`, else one
    tile), 0 = one tile, N = tiles of N x N pixels (a positive multiple of ``align``). An axis
    no longer than the tile size gets a single tile.

    Raises:
        ValueError: ``tile`` is not a multiple of ``align``, or a tile would exceed
            :data:`~cca_codec.format.contents.MAX_TILE_PIXELS` (the message says what to use).
    """
    if tile is None:
        tile = DEFAULT_TILE if height * width > AUTO_TILE_PIXELS else 0
    if tile < 0 or tile % align:
        raise ValueError(f"tile size {tile} must be 0 (no tiling) or a positive multiple of {align}")
    if tile == 0:
        layout = TileLayout(height, width, height, width, 0)
    else:
        layout = TileLayout(height, width, min(tile, height), min(tile, width), DEFAULT_OVERLAP)
    if padded_tile_extent(layout.height, layout.tile_height, layout.overlap, align) * padded_tile_extent(
        layout.width, layout.tile_width, layout.overlap, align
    ) > MAX_TILE_PIXELS:
        raise ValueError(
            f"a {width}x{height} image needs tiles: tiles over {MAX_TILE_PIXELS} pixels (padded, with overlap) "
            f"are not allowed; use a tile size of at most {_largest_tile(align)}"
        )
    return layout


def _largest_tile(align: int) -> int:
    """Largest tile size (a multiple of ``align``) whose padded extent with overlap fits MAX_TILE_PIXELS."""
    side = math.isqrt(MAX_TILE_PIXELS) // align * align
    while side > align and padded_tile_extent(3 * side, side, DEFAULT_OVERLAP, align) ** 2 > MAX_TILE_PIXELS:
        side -= align
    return side


class BlendAssembler:
    """Builds the uint8 image from decoded tiles given in index (row-major) order.

    Each tile's pixels are added, weighted, into a float32 strip covering the current tile
    row's extent; rows that no later tile touches are rounded into the uint8 output as soon
    as the next tile row starts.
    """

    def __init__(self, layout: TileLayout) -> None:
        self.layout = layout
        self.image = np.empty((layout.height, layout.width, 3), dtype=np.uint8)
        strip = min(layout.height, layout.tile_height + 2 * layout.overlap)
        self._strip = np.zeros((strip, layout.width, 3), dtype=np.float32)
        self._top = 0  # image row held in self._strip[0]
        self._next = 0  # index of the tile expected next

    def add(self, index: int, pixels: np.ndarray) -> None:
        """Blend in tile ``index``: ``pixels`` (h, w, 3) float32 in [0, 1] over its extent."""
        if index != self._next:
            raise ValueError(f"tiles must be added in order: expected tile {self._next}, got {index}")
        rows, cols = self.layout.extent(index)
        if pixels.shape != (rows.stop - rows.start, cols.stop - cols.start, 3):
            raise ValueError(f"tile {index} has shape {pixels.shape}, its extent is {rows}, {cols}")
        if rows.start > self._top:
            self._flush(rows.start)
        w_rows, w_cols = self.layout.weights(index)
        top = rows.start - self._top
        self._strip[top : top + pixels.shape[0], cols] += pixels * w_rows[:, None, None] * w_cols[None, :, None]
        self._next += 1

    def finish(self) -> np.ndarray:
        """The assembled (H, W, 3) uint8 image (all tiles must have been added)."""
        if self._next != self.layout.count:
            raise ValueError(f"only {self._next} of {self.layout.count} tiles were added")
        self._flush(self.layout.height)
        return self.image

    def _flush(self, until: int) -> None:
        """Round image rows [top, until) into the output and move the strip down to ``until``."""
        done = until - self._top
        self.image[self._top : until] = np.clip(np.rint(self._strip[:done] * 255.0), 0, 255).astype(np.uint8)
        kept = self._strip.shape[0] - done
        self._strip[:kept] = self._strip[done:]
        self._strip[kept:] = 0.0
        self._top = until
