"""Writes tests/data/bad/: small crafted `.cca` files that every reader must refuse.

    python tests/make_bad_corpus.py      # rewrites the files and manifest.json

Each file is built byte by byte from docs/FORMAT.md (no ccacodec code is used, so the files
stay valid test input whatever the reader does) around a well-formed 40x24 file that names a
model no installation has. ``manifest.json`` maps each file name to the exit code
``ccacodec decode`` must end with and a fragment of its one-line message.
"""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data" / "bad"
SIGNATURE = b"\x89CCA\r\n\x1a\n"
FORMAT_ERROR, MODEL_ERROR = 4, 5


def chunk(ctype: bytes, payload: bytes, length: int | None = None, crc: int | None = None) -> bytes:
    """A chunk; ``length`` and ``crc`` override the true values."""
    true_crc = zlib.crc32(ctype + payload)
    return struct.pack(">I", len(payload) if length is None else length) + ctype + payload + struct.pack(
        ">I", true_crc if crc is None else crc
    )


def chdr(**changes: object) -> bytes:
    """CHDR payload of a 40x24 RGB image in one tile, with fields replaced by ``changes``."""
    f: dict = dict(
        version=1, width=40, height=24, color_mode=0, bit_depth=8, color_space=0, context_mode=1,
        numeric_mode=1, coder_id=1, quality=4.0, lam=0.013, tile_width=40, tile_height=24,
        tile_overlap=0, latent_align=64, coder_version=b"constriction 0.5.0", model_id=b"no-such-model",
        sha=bytes(32),
    )
    f.update(changes)
    return (
        struct.pack(">BIIBBBBBBddIIHH", f["version"], f["width"], f["height"], f["color_mode"], f["bit_depth"],
                    f["color_space"], f["context_mode"], f["numeric_mode"], f["coder_id"], f["quality"], f["lam"],
                    f["tile_width"], f["tile_height"], f["tile_overlap"], f["latent_align"])
        + bytes([len(f["coder_version"])]) + f["coder_version"] + bytes([len(f["model_id"])]) + f["model_id"] + f["sha"]
    )


def cdat(index: int = 0, stream: bytes = b"\x12\x34\x56\x78" * 8) -> bytes:
    return chunk(b"CDAT", struct.pack(">II", index, 0xDEADBEEF) + stream)


CEND = chunk(b"CEND", b"")


def file(header: bytes | None = None, body: bytes | None = None) -> bytes:
    return SIGNATURE + chunk(b"CHDR", chdr() if header is None else header) + (cdat() + CEND if body is None else body)


def corpus() -> dict[str, tuple[bytes, int, str]]:
    """name -> (file bytes, exit code, message fragment)."""
    good = file()
    tiled = chdr(width=200, height=24, tile_width=64, tile_height=24, tile_overlap=16)
    return {
        "empty.cca": (b"", FORMAT_ERROR, "empty file"),
        "png_signature.cca": (b"\x89PNG\r\n\x1a\n" + good[8:], FORMAT_ERROR, "bad signature"),
        "half_signature.cca": (SIGNATURE[:5], FORMAT_ERROR, "truncated file"),
        "truncated_in_cdat.cca": (good[:-30], FORMAT_ERROR, "truncated file"),
        "no_cend.cca": (good[:-12], FORMAT_ERROR, "without a CEND chunk"),
        "trailing_bytes.cca": (good + b"\0", FORMAT_ERROR, "trailing bytes"),
        "crc_mismatch.cca": (good[:30] + bytes([good[30] ^ 1]) + good[31:], FORMAT_ERROR, "CRC mismatch"),
        "huge_chunk_length.cca": (SIGNATURE + chunk(b"CHDR", chdr(), length=0xFFFFFFF0), FORMAT_ERROR, "over the"),
        "length_past_end.cca": (SIGNATURE + chunk(b"CHDR", chdr(), length=4096), FORMAT_ERROR, "truncated file"),
        "version_9.cca": (file(chdr(version=9)), FORMAT_ERROR, "version 9"),
        "bomb_65535x65535.cca": (file(chdr(width=65535, height=65535, tile_width=1024, tile_height=1024,
                                               tile_overlap=16)), FORMAT_ERROR, "decompression-bomb"),
        "giant_single_tile.cca": (file(chdr(width=8192, height=8192, tile_width=8192, tile_height=8192)),
                                  FORMAT_ERROR, "exceed the limit"),
        "unaligned_tiles.cca": (file(chdr(width=200, tile_width=100)), FORMAT_ERROR, "multiple of latent_align"),
        "overlap_too_wide.cca": (file(chdr(width=200, tile_width=64, tile_overlap=40)), FORMAT_ERROR, "more than half"),
        "missing_tile.cca": (file(tiled, cdat(0) + cdat(1) + cdat(3) + CEND), FORMAT_ERROR, "tile 2 of 4 is missing"),
        "duplicate_tile.cca": (file(tiled, cdat(0) + cdat(1) + cdat(1) + CEND), FORMAT_ERROR, "appears twice"),
        "tile_out_of_grid.cca": (file(body=cdat(7) + CEND), FORMAT_ERROR, "out of range"),
        "no_tiles.cca": (file(body=CEND), FORMAT_ERROR, "no CDAT"),
        "second_chdr.cca": (file(body=chunk(b"CHDR", chdr()) + cdat() + CEND), FORMAT_ERROR, "second CHDR"),
        "unknown_critical.cca": (file(body=chunk(b"XTRA", b"?") + cdat() + CEND), FORMAT_ERROR, "critical chunk"),
        "alpha_zlib_bomb.cca": (file(body=chunk(b"aLPH", zlib.compress(bytes(1 << 20), 9)) + cdat() + CEND),
                                FORMAT_ERROR, "aLPH chunk inflates to more"),
        "icc_without_flag.cca": (file(body=chunk(b"iCCP", b"icc") + cdat() + CEND), FORMAT_ERROR, "ICC profile"),
        "nan_quality.cca": (file(chdr(quality=float("nan"))), FORMAT_ERROR, "quality"),
        "unknown_model.cca": (good, MODEL_ERROR, "no-such-model"),
    }


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for name, (data, code, message) in corpus().items():
        (OUT / name).write_bytes(data)
        manifest[name] = {"exit_code": code, "message": message}
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {len(manifest)} files to {OUT}")


if __name__ == "__main__":
    main()
