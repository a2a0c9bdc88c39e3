"""Tiled coding: the tile grid and its blending weights (cca_codec.format.tiling), and tiled files end to end."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import lively_model, sample_pixels

from cca_codec.base.errors import UsageError
from cca_codec.core.codec import decode_image, encode_image
from cca_codec.format.container import read_container
from cca_codec.format.tiling import AUTO_TILE_PIXELS, DEFAULT_OVERLAP, DEFAULT_TILE, BlendAssembler, TileLayout, choose_layout
from cca_codec.image.io import SourceImage

LAYOUTS = [
    TileLayout(200, 300, 64, 128, 16),  # last row and column smaller than the overlap band
    TileLayout(129, 65, 64, 64, 32),  # 1-pixel last tiles, bands as wide as the core
    TileLayout(50, 700, 50, 128, 8),  # one row of tiles
    TileLayout(17, 33, 17, 33, 0),  # one tile
]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_weights_cover_every_pixel_with_sum_one(layout):
    total = np.zeros((layout.height, layout.width))
    for index in range(layout.count):
        rows, cols = layout.extent(index)
        w_rows, w_cols = layout.weights(index)
        assert w_rows.min() > 0 and w_cols.min() > 0
        total[rows, cols] += w_rows[:, None] * w_cols[None, :]
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_assembler_rebuilds_the_image_from_its_tiles(layout):
    image = np.random.default_rng(0).integers(0, 256, (layout.height, layout.width, 3), dtype=np.uint8)
    assembler = BlendAssembler(layout)
    for index in range(layout.count):
        assembler.add(index, image[layout.extent(index)].astype(np.float32) / 255.0)
    np.testing.assert_array_equal(assembler.finish(), image)


def test_assembler_refuses_tiles_out_of_order_or_missing():
    layout = LAYOUTS[0]
    assembler = BlendAssembler(layout)
    with pytest.raises(ValueError, match="expected tile 0"):
        assembler.add(1, np.zeros((1, 1, 3), np.float32))
    with pytest.raises(ValueError, match="only 0 of"):
        assembler.finish()


def test_extents_add_the_overlap_towards_neighbours_only():
    layout = TileLayout(200, 300, 64, 128, 16)
    assert layout.grid == (4, 3)
    assert layout.extent(0) == (slice(0, 80), slice(0, 144))
    assert layout.extent(4) == (slice(48, 144), slice(112, 272))
    assert layout.extent(11) == (slice(176, 200), slice(240, 300))


def test_choose_layout():
    assert choose_layout(100, 100, None, 64) == TileLayout(100, 100, 100, 100, 0)
    side = int(AUTO_TILE_PIXELS**0.5) + 1
    assert choose_layout(side, side, None, 64) == TileLayout(side, side, DEFAULT_TILE, DEFAULT_TILE, DEFAULT_OVERLAP)
    assert choose_layout(2048, 2048, 0, 64).count == 1  # exactly MAX_TILE_PIXELS
    assert choose_layout(100, 1000, 256, 64) == TileLayout(100, 1000, 100, 256, DEFAULT_OVERLAP)
    with pytest.raises(ValueError, match="multiple of 64"):
        choose_layout(100, 100, 100, 64)
    with pytest.raises(ValueError, match="use a tile size of at most"):
        choose_layout(5000, 5000, 0, 64)
    with pytest.raises(ValueError, match="use a tile size of at most"):
        choose_layout(5000, 5000, 4096, 64)


@pytest.fixture(scope="module")
def model():
    return lively_model("test-tiny")


def source(rgb: np.ndarray) -> SourceImage:
    return SourceImage(rgb=rgb, color_mode="rgb", bit_depth=8)


@pytest.mark.parametrize("mode", ["grouped", "checkerboard"])
def test_tiled_round_trip(model, mode):
    rgb = sample_pixels(150, 200)
    data = encode_image(source(rgb), model, quality=3, context=mode, device="cpu", tile=64)
    container = read_container(data)
    h = container.header
    assert (h.tile_width, h.tile_height, h.tile_overlap) == (64, 64, DEFAULT_OVERLAP)
    assert len(container.tiles) == 3 * 4 and all(t.stream for t in container.tiles)
    assert len({t.symbols_crc32 for t in container.tiles}) == 12  # every tile its own stream and CRC
    out = decode_image(data, model, device="cpu")
    assert out.rgb.shape == rgb.shape and out.rgb.dtype == np.uint8
    np.testing.assert_array_equal(decode_image(data, model, device="cpu").rgb, out.rgb)
    assert encode_image(source(rgb), model, quality=3, context=mode, device="cpu", tile=64) == data


def test_a_tile_decodes_like_the_same_pixels_coded_alone(model):
    """Inside a core, away from the bands, the picture is exactly that tile's reconstruction."""
    rgb = sample_pixels(96, 200)
    tiled = decode_image(encode_image(source(rgb), model, quality=3, device="cpu", tile=64), model, device="cpu")
    layout = TileLayout(96, 200, 64, 64, DEFAULT_OVERLAP)
    rows, cols = layout.extent(1)  # rows 0..80, columns 48..144
    alone = decode_image(encode_image(source(np.ascontiguousarray(rgb[rows, cols])), model, quality=3,
                                      device="cpu", tile=0), model, device="cpu")
    core = (slice(0, 48), slice(80, 112))  # rows and columns no other tile covers
    np.testing.assert_array_equal(tiled.rgb[core], alone.rgb[core[0], slice(32, 64)])


def test_bad_tile_sizes_are_usage_errors(model):
    with pytest.raises(UsageError, match="multiple of 64"):
        encode_image(source(sample_pixels(64, 64)), model, tile=100, device="cpu")
