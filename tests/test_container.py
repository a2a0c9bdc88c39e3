"""Tests of the .cca container (cca_codec.format.container and .contents).

Hand-built files use ``pack_chdr_raw``/``chunk``, an independent implementation of the
layout in docs/FORMAT.md that skips validation, so the reader's checks can be reached.
"""
from __future__ import annotations

import dataclasses
import json
import random
import struct
import tracemalloc
import zlib

import pytest

from cca_codec.base.errors import FormatError
from cca_codec.format.container import SIGNATURE, container_overhead, describe, read_container, read_header, write_container
from cca_codec.format.contents import FORMAT_VERSION, Container, Header, TilePayload

SHA = bytes(range(32))


def make_header(**changes) -> Header:
    """A valid 20x12 header with 8x8 tiles (grid 2 rows x 3 cols = 6 tiles, latent_align 8)."""
    fields = dict(
        width=20, height=12, color_mode="rgb", bit_depth=8, color_space="srgb",
        context_mode="checkerboard", quality=3.5, lam=0.0067, tile_width=8, tile_height=8,
        tile_overlap=4, latent_align=8, coder_version="constriction 0.5.0",
        model_id="cca-mse_q3.5", weights_sha256=SHA,
    )
    fields.update(changes)
    return Header(**fields)


def make_tiles(count: int) -> tuple[TilePayload, ...]:
    return tuple(TilePayload(i, (i * 0x9E3779B1) & 0xFFFFFFFF, bytes([i + 1]) * (i % 3)) for i in range(count))


def make_container(**changes) -> Container:
    fields = dict(header=make_header(), tiles=make_tiles(6))
    fields.update(changes)
    return Container(**fields)


def small_file() -> bytes:
    """A small file using every chunk type: ICC, EXIF, alpha and 6 tiles."""
    header = make_header(color_space="icc")
    alpha = bytes((x * 13) % 256 for x in range(header.width * header.height))
    return write_container(make_container(header=header, icc_profile=b"icc!", exif=b"Exif\0\0MM", alpha=alpha))


def chunk(ctype: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))


def pack_str(s: str) -> bytes:
    raw = s.encode("utf-8")
    return bytes([len(raw)]) + raw


def pack_chdr_raw(**changes) -> bytes:
    """CHDR payload built field by field from docs/FORMAT.md, with no validation."""
    f = dict(
        format_version=1, width=20, height=12, color_mode=0, bit_depth=8, color_space=0,
        context_mode=1, numeric_mode=1, coder_id=1, quality=3.5, lam=0.0067, tile_width=8,
        tile_height=8, tile_overlap=4, latent_align=8, coder_version="constriction 0.5.0",
        model_id="cca-mse_q3.5", weights_sha256=SHA, extra=b"",
    )
    f.update(changes)
    return (
        struct.pack(">B", f["format_version"])
        + struct.pack(">II", f["width"], f["height"])
        + struct.pack(">BBBBBB", f["color_mode"], f["bit_depth"], f["color_space"],
                      f["context_mode"], f["numeric_mode"], f["coder_id"])
        + struct.pack(">dd", f["quality"], f["lam"])
        + struct.pack(">IIHH", f["tile_width"], f["tile_height"], f["tile_overlap"], f["latent_align"])
        + pack_str(f["coder_version"]) + pack_str(f["model_id"]) + f["weights_sha256"] + f["extra"]
    )


def cdat(index: int, stream: bytes = b"\x01\x02") -> bytes:
    return chunk(b"CDAT", struct.pack(">II", index, 0) + stream)


def raw_file(chdr: bytes | None = None, body: bytes | None = None, tiles: int = 6) -> bytes:
    """Signature + CHDR + body (default: CDAT 0..tiles-1 and CEND)."""
    if body is None:
        body = b"".join(cdat(i) for i in range(tiles)) + chunk(b"CEND", b"")
    return SIGNATURE + chunk(b"CHDR", pack_chdr_raw() if chdr is None else chdr) + body


def assert_format_error(data: bytes, match: str | None = None, **kwargs) -> FormatError:
    with pytest.raises(FormatError, match=match) as info:
        read_container(data, **kwargs)
    message = str(info.value)
    assert message and "\n" not in message
    return info.value


# ------------------------------------------------------------------------- round trips


def test_independent_packer_matches_writer():
    assert write_container(make_container()) == raw_file(body=b"".join(
        chunk(b"CDAT", struct.pack(">II", t.tile_index, t.symbols_crc32) + t.stream) for t in make_tiles(6)
    ) + chunk(b"CEND", b""))


def test_round_trip_plain_several_tiles():
    container = make_container()
    assert container.header.tile_grid == (2, 3)
    data = write_container(container)
    assert data.startswith(SIGNATURE)
    assert read_container(data) == container
    assert read_header(data) == container.header


def test_round_trip_with_ancillary_chunks():
    data = small_file()
    back = read_container(data)
    assert back.icc_profile == b"icc!" and back.exif == b"Exif\0\0MM"
    assert back.alpha == bytes((x * 13) % 256 for x in range(20 * 12))
    assert write_container(back) == data
    types = [c["type"] for c in describe(back)["chunks"]]
    assert types == ["CHDR", "iCCP", "eXIf", "aLPH"] + ["CDAT"] * 6 + ["CEND"]


def test_round_trip_single_tile_gray_and_extreme_values():
    header = make_header(width=1, height=1, tile_width=1, tile_height=1, color_mode="gray",
                         bit_depth=16, context_mode="grouped", quality=64.0, lam=1e-300,
                         tile_overlap=65535, latent_align=1024, coder_version="é" * 127)
    container = Container(header, (TilePayload(0, 0xFFFFFFFF, b""),), alpha=b"\x80")
    assert read_container(write_container(container)) == container


def test_tiles_sorted_when_written_out_of_order():
    data = raw_file(body=b"".join(cdat(i, bytes([i])) for i in (5, 2, 0, 4, 1, 3)) + chunk(b"CEND", b""))
    assert [t.tile_index for t in read_container(data).tiles] == list(range(6))
    assert [t.stream for t in read_container(data).tiles] == [bytes([i]) for i in range(6)]


# -------------------------------------------------------------------- chunk handling


def test_unknown_ancillary_chunk_skipped():
    body = cdat(0) + chunk(b"zZzZ", b"whatever") + b"".join(cdat(i) for i in range(1, 6)) + chunk(b"CEND", b"")
    back = read_container(raw_file(body=body))
    assert back.skipped_chunks == ("zZzZ",)
    assert len(back.tiles) == 6


def test_unknown_critical_chunk_refused():
    body = cdat(0) + chunk(b"ZZZZ", b"x") + b"".join(cdat(i) for i in range(1, 6)) + chunk(b"CEND", b"")
    assert_format_error(raw_file(body=body), match="unsupported critical chunk 'ZZZZ'")


@pytest.mark.parametrize("ctype", [b"CD1T", b"cd t", b"\x00\x00\x00\x00"])
def test_non_letter_chunk_type_refused(ctype):
    assert_format_error(raw_file(body=cdat(0) + chunk(ctype, b"")), match="invalid chunk type")


@pytest.mark.parametrize("ctype", [b"iCCP", b"eXIf"])
def test_duplicate_ancillary_refused(ctype):
    body = chunk(ctype, b"a") + chunk(ctype, b"b") + b"".join(cdat(i) for i in range(6)) + chunk(b"CEND", b"")
    chdr = pack_chdr_raw(color_space=1 if ctype == b"iCCP" else 0)
    assert_format_error(raw_file(chdr=chdr, body=body), match="appears twice")


def test_second_chdr_refused():
    body = chunk(b"CHDR", pack_chdr_raw()) + b"".join(cdat(i) for i in range(6)) + chunk(b"CEND", b"")
    assert_format_error(raw_file(body=body), match="second CHDR")


def test_first_chunk_must_be_chdr():
    assert_format_error(SIGNATURE + cdat(0) + chunk(b"CEND", b""), match="expected 'CHDR'")


def test_chunk_length_limit():
    huge = SIGNATURE + struct.pack(">I", (1 << 30) + 1) + b"CHDR" + bytes(100)
    assert_format_error(huge, match="over the 1073741824-byte limit")


def test_cend_with_payload_refused():
    body = b"".join(cdat(i) for i in range(6)) + chunk(b"CEND", b"x")
    assert_format_error(raw_file(body=body), match="CEND chunk has a 1-byte payload")


def test_short_cdat_refused():
    body = chunk(b"CDAT", b"\0" * 7) + chunk(b"CEND", b"")
    assert_format_error(raw_file(body=body), match="CDAT chunk at byte .* is too short")


# ---------------------------------------------------------------------- file framing


def test_empty_file():
    assert_format_error(b"", match="^empty file$")


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n" + bytes(40), b"hello world", b"\x89CCA\r\n\x1a\x0b"])
def test_bad_signature(data):
    assert_format_error(data, match=r"^not a \.cca file \(bad signature\)$")


def test_every_truncation_refused():
    data = small_file()
    for cut in range(len(data)):
        assert_format_error(data[:cut])
        if cut > 0:
            with pytest.raises(FormatError):
                read_container(bytearray(data[:cut]))


def test_missing_cend_is_truncation():
    data = write_container(make_container())
    assert_format_error(data[:-12], match="without a CEND chunk")


def test_trailing_bytes_after_cend():
    data = write_container(make_container())
    assert_format_error(data + b"\0", match="1 trailing bytes after the CEND chunk")
    assert_format_error(data + SIGNATURE, match="trailing bytes")


def test_every_single_bit_flip_refused():
    data = small_file()
    for position in range(len(data)):
        for bit in range(8):
            corrupt = bytearray(data)
            corrupt[position] ^= 1 << bit
            assert_format_error(bytes(corrupt))


def test_random_mutations_only_raise_format_error():
    rng = random.Random(1234)
    data = small_file()
    for _ in range(3000):
        corrupt = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(3)
            pos = rng.randrange(len(corrupt))
            if op == 0:
                corrupt[pos] = rng.randrange(256)
            elif op == 1:
                del corrupt[pos : pos + rng.randint(1, 16)]
            else:
                corrupt[pos:pos] = rng.randbytes(rng.randint(1, 16))
        try:
            read_container(bytes(corrupt))
        except FormatError as exc:
            assert "\n" not in str(exc)


# ------------------------------------------------------------------------- CHDR rules


def test_version_2_refused_naming_both_versions():
    err = assert_format_error(raw_file(chdr=pack_chdr_raw(format_version=2)))
    assert "version 2" in str(err) and f"version {FORMAT_VERSION}" in str(err)
    with pytest.raises(FormatError, match="version 2"):
        read_header(raw_file(chdr=pack_chdr_raw(format_version=2)))
    # A future version may change the CHDR layout: the version is reported, not the length.
    with pytest.raises(FormatError, match="version 2"):
        read_header(SIGNATURE + chunk(b"CHDR", b"\x02"))


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(width=0), "width"),
        (dict(height=1 << 31), "height"),
        (dict(color_mode=2), "color_mode"),
        (dict(bit_depth=0), "bit_depth"),
        (dict(bit_depth=17), "bit_depth"),
        (dict(color_space=2), "color_space"),
        (dict(context_mode=2), "context_mode"),
        (dict(numeric_mode=0), "numeric_mode"),
        (dict(numeric_mode=2), "numeric_mode"),
        (dict(coder_id=2), "coder_id"),
        (dict(quality=0.0), "quality"),
        (dict(quality=64.5), "quality"),
        (dict(quality=float("nan")), "quality"),
        (dict(lam=float("inf")), "lam"),
        (dict(lam=-1.0), "lam"),
        (dict(tile_width=0), "tile_width"),
        (dict(tile_width=21), "tile_width"),
        (dict(tile_height=13), "tile_height"),
        (dict(latent_align=48), "latent_align"),
        (dict(latent_align=0), "latent_align"),
        (dict(latent_align=2048), "latent_align"),
        (dict(coder_version=""), "coder_version"),
        (dict(coder_version="a\nb"), "coder_version"),
        (dict(model_id=""), "model_id"),
        (dict(model_id="bad/id"), "model_id"),
        (dict(extra=b"\0"), "trailing bytes"),
        (dict(weights_sha256=SHA[:31]), "weights_sha256"),
    ],
)
def test_out_of_range_chdr_field_named(changes, field):
    with pytest.raises(FormatError, match=field):
        read_header(raw_file(chdr=pack_chdr_raw(**changes)))
    assert_format_error(raw_file(chdr=pack_chdr_raw(**changes)), match=field)


def test_invalid_utf8_string_refused():
    chdr = pack_chdr_raw().replace(pack_str("constriction 0.5.0"), b"\x02\xff\xfe")
    assert_format_error(raw_file(chdr=chdr), match="coder_version is not valid UTF-8")


def test_string_length_past_chdr_end_refused():
    chdr = pack_chdr_raw()[:43] + b"\xff" + b"abc"
    assert_format_error(raw_file(chdr=chdr), match="coder_version declares 255 bytes")


def test_absurd_dimensions_refused_before_anything_else():
    chdr = pack_chdr_raw(width=(1 << 31) - 1, height=(1 << 31) - 1)
    pixels = ((1 << 31) - 1) ** 2
    # Only the CHDR follows the signature: a reader that went on would report truncation.
    data = SIGNATURE + chunk(b"CHDR", chdr)
    tracemalloc.start()
    try:
        err = assert_format_error(data, match="decompression-bomb")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(pixels) in str(err) and str(1 << 28) in str(err)
    assert peak < 1 << 20
    with pytest.raises(FormatError, match="decompression-bomb"):
        read_header(data)


def test_max_pixels_argument():
    data = write_container(make_container())  # 20 x 12 = 240 pixels
    assert read_container(data, max_pixels=240).header.width == 20
    assert_format_error(data, match="240 pixels, over the limit of 239", max_pixels=239)
    with pytest.raises(ValueError):
        read_container(data, max_pixels=0)


# ------------------------------------------------------------------------ tile rules


def test_missing_tile_refused():
    body = b"".join(cdat(i) for i in (0, 1, 2, 4, 5)) + chunk(b"CEND", b"")
    assert_format_error(raw_file(body=body), match="tile 3 of 6 is missing")
    body = b"".join(cdat(i) for i in range(5)) + chunk(b"CEND", b"")
    assert_format_error(raw_file(body=body), match="tile 5 of 6 is missing")


def test_duplicate_tile_refused():
    body = b"".join(cdat(i) for i in (0, 1, 2, 3, 4, 5, 2)) + chunk(b"CEND", b"")
    assert_format_error(raw_file(body=body), match="tile index 2 appears twice")


def test_out_of_range_tile_refused():
    body = b"".join(cdat(i) for i in range(7)) + chunk(b"CEND", b"")
    assert_format_error(raw_file(body=body), match="tile index 6 is out of range")


def test_no_tiles_refused():
    assert_format_error(raw_file(body=chunk(b"CEND", b"")), match="no CDAT chunk")


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(tile_width=12), "tile_width = 12 must equal the image size or be a multiple of latent_align"),
        (dict(tile_height=4, tile_overlap=2), "tile_height = 4 must equal the image size"),
        (dict(tile_overlap=5), "tile_overlap = 5 is more than half of tile_width = 8"),
        (dict(width=4096, height=4096, tile_width=4096, tile_height=4096, latent_align=64),
         "tiles of 16777216 pixels"),
        (dict(width=5000, height=5000, tile_width=2048, tile_height=2048, tile_overlap=32, latent_align=64),
         "tiles of 4460544 pixels"),
    ],
)
def test_tile_layout_rules(changes, message):
    """Several tiles per axis need aligned cores at least twice the overlap; the coded region of
    one tile is bounded (checked from the header, so a decoder's memory is bounded per tile)."""
    assert_format_error(raw_file(chdr=pack_chdr_raw(**changes)), match=message)
    with pytest.raises(ValueError, match=message.split(" = ")[0]):
        write_container(make_container(header=make_header(**{k: v for k, v in changes.items()})))


def test_single_tile_axis_may_have_any_size():
    """An axis with one tile (tile size = image size) needs no alignment and ignores the overlap."""
    header = make_header(width=20, height=12, tile_width=20, tile_height=8, tile_overlap=4)
    container = make_container(header=header, tiles=make_tiles(2))
    assert read_container(write_container(container)) == container


# ----------------------------------------------------------------------- ancillaries


def alpha_file(payload: bytes) -> bytes:
    body = chunk(b"aLPH", payload) + b"".join(cdat(i) for i in range(6)) + chunk(b"CEND", b"")
    return raw_file(body=body)


def test_alpha_zlib_bomb_refused_without_inflating():
    bomb = zlib.compress(bytes(64 << 20), 9)  # ~64 KiB inflating to 64 MiB; the plane is 240 bytes
    assert len(bomb) < 100_000
    data = alpha_file(bomb)
    tracemalloc.start()
    try:
        assert_format_error(data, match="inflates to more than height\\*width = 240 bytes")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def test_alpha_one_byte_too_long_refused():
    assert_format_error(alpha_file(zlib.compress(bytes(241))), match="more than height\\*width")


def test_alpha_too_short_refused():
    assert_format_error(alpha_file(zlib.compress(bytes(239))), match="inflates to 239 bytes")


def test_alpha_corrupt_or_truncated_zlib_refused():
    good = zlib.compress(bytes(range(240)))
    assert read_container(alpha_file(good)).alpha == bytes(range(240))
    assert_format_error(alpha_file(b"not zlib"), match="corrupt zlib stream")
    assert_format_error(alpha_file(good[:-3]), match="truncated")
    assert_format_error(alpha_file(good + b"x"), match="after the end of the zlib stream")


def test_icc_must_match_color_space():
    icc_body = chunk(b"iCCP", b"prof") + b"".join(cdat(i) for i in range(6)) + chunk(b"CEND", b"")
    assert_format_error(raw_file(body=icc_body), match="color_space is 'srgb' but the ICC profile is present")
    assert_format_error(raw_file(chdr=pack_chdr_raw(color_space=1)), match="ICC profile is absent")
    assert read_container(raw_file(chdr=pack_chdr_raw(color_space=1), body=icc_body)).icc_profile == b"prof"


def test_empty_exif_refused():
    body = chunk(b"eXIf", b"") + b"".join(cdat(i) for i in range(6)) + chunk(b"CEND", b"")
    assert_format_error(raw_file(body=body), match="exif must be None or non-empty")


# ---------------------------------------------------------------------------- writer


@pytest.mark.parametrize(
    "container",
    [
        make_container(header=make_header(width=0)),
        make_container(header=make_header(quality=65)),
        make_container(header=make_header(model_id="a b")),
        make_container(header=make_header(weights_sha256=b"short")),
        make_container(header=make_header(format_version=2)),
        make_container(header=make_header(width="20")),
        make_container(tiles=make_tiles(5)),
        make_container(tiles=make_tiles(6)[::-1]),
        make_container(tiles=make_tiles(6) + (TilePayload(5, 0, b""),)),
        make_container(tiles=(TilePayload(0, 1 << 32, b""),) + make_tiles(6)[1:]),
        make_container(icc_profile=b"icc"),
        make_container(alpha=bytes(239)),
        make_container(exif=b""),
    ],
)
def test_writer_refuses_invalid_container(container):
    with pytest.raises(ValueError):
        write_container(container)


def test_writer_refuses_non_container():
    with pytest.raises(ValueError):
        write_container(make_header())


# ------------------------------------------------------------------------- reporting


def test_overhead_and_describe():
    data = small_file()
    container = read_container(data)
    stream_bytes = sum(len(t.stream) for t in container.tiles)
    assert container_overhead(container) == len(data) - stream_bytes
    info = describe(container)
    assert json.loads(json.dumps(info)) == info
    assert info["header"]["weights_sha256"] == SHA.hex()
    assert info["header"]["quality"] == 3.5
    assert {f.name for f in dataclasses.fields(Header)} == set(info["header"])
    assert info["tile_grid"] == [2, 3] and info["tile_count"] == 6
    assert info["tile_stream_bytes"] == [len(t.stream) for t in container.tiles]
    assert info["file_bytes"] == len(data)
    assert info["overhead_bytes"] == len(data) - stream_bytes
    assert info["has_alpha"] and info["icc_profile_bytes"] == 4 and info["exif_bytes"] == 8
