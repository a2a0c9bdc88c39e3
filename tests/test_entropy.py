"""The symbol coder and the scale table."""
import numpy as np
import pytest
import torch
from compressai.entropy_models import GaussianConditional

from cca_codec.base.errors import CodecError, FormatError
from cca_codec.entropy.coder import SymbolDecoder, SymbolEncoder
from cca_codec.entropy.tables import CDFTables, ScaleTable
from cca_codec.nn.model import default_scale_table


@pytest.fixture(scope="module")
def tables():
    gc = GaussianConditional(None)
    gc.update_scale_table(default_scale_table().float())
    return CDFTables.from_module(gc)


def test_round_trip_with_escapes_in_several_steps(tables):
    rng = np.random.default_rng(0)
    steps = []
    for n in (1, 17, 5000):
        idx = rng.integers(0, len(tables), n)
        sym = np.round(rng.normal(0, 1, n) * -tables.offset[idx] / 4).astype(np.int64)
        steps.append((sym, idx))
    steps[-1][0][:6] = [10**6, -(10**6), 2**29, -(2**29), 0, 1]  # escapes far outside every table
    enc = SymbolEncoder()
    for sym, idx in steps:
        enc.encode(sym, idx, tables)
    dec = SymbolDecoder(enc.finish())
    for sym, idx in steps:
        assert np.array_equal(dec.decode(idx, tables), sym)
    assert dec.crc32 == enc.crc32 and dec.count == enc.count == 5018


def test_coding_is_efficient_for_matching_scales(tables):
    rng = np.random.default_rng(1)
    bounds = default_scale_table()
    j = 40
    sym = np.round(rng.normal(0, float(bounds[j]), 20000)).astype(np.int64)
    enc = SymbolEncoder()
    enc.encode(sym, np.full(sym.size, j), tables)
    bits = 8 * len(enc.finish())
    entropy = 0.5 * np.log2(2 * np.pi * np.e * float(bounds[j]) ** 2) * sym.size
    assert bits < 1.02 * entropy + 64


def test_symbols_out_of_range_are_refused(tables):
    with pytest.raises(CodecError):
        SymbolEncoder().encode(np.array([2**31]), np.array([0]), tables)


def test_a_stream_of_odd_length_is_corrupt():
    with pytest.raises(FormatError):
        SymbolDecoder(b"abc")


def test_scale_index_picks_the_first_bound_not_below():
    bounds = default_scale_table()
    table = ScaleTable(bounds)
    scales = torch.stack([bounds[0] / 2, bounds[0], bounds[0] * 1.0001, bounds[10], bounds[-1] * 3])
    assert table.index(scales).tolist() == [0, 0, 1, 10, 63]
    with pytest.raises(ValueError):
        table.index(torch.tensor([float("nan")], dtype=torch.float64))
