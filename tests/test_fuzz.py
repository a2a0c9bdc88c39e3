"""A fuzzed decoder: damaged `.cca` files end in a documented error, never a crash, hang or stray file.

Valid files (tiny model; one tile and several; grouped and checkerboard) are mutated by a
seeded generator: bit flips, truncations, inserted and deleted bytes, and chunk-level edits
with their CRCs recomputed (so they reach the deeper checks and the range decoder): swapped,
duplicated and dropped chunks, rewritten CHDR fields (huge sizes, tile layouts), bytes
changed inside tile streams. Most cases run in-process through the function behind
``ccacodec decode``; a sample runs through the real command line. The crafted corpus in
tests/data/bad/ (made by tests/make_bad_corpus.py) is checked file by file.
"""
from __future__ import annotations

import json
import random
import resource
import struct
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import TEST_MODEL_ID, sample_pixels
from test_cli import ccacodec_process, error_line, run, subprocess_env

from cca_codec.base import errors
from cca_codec.core.codec import decode_image, encode_image
from cca_codec.format.container import SIGNATURE
from cca_codec.image.io import SourceImage, encode_png

BAD = Path(__file__).resolve().parent / "data" / "bad"
DECODE_CODES = {errors.FormatError.exit_code, errors.ModelError.exit_code}
CASES_PER_FILE = 500
CLI_SAMPLE = 50
SECONDS_PER_CASE = 10.0  # CPU seconds of this process (wall time depends on what else the machine runs)

# one torch thread: on a loaded machine a second OpenMP thread spins at every barrier while the first waits
# for a core, and that spinning counts as CPU time (a 10.3 CPU s case beside two training processes)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(test_models_root):
    from cca_codec.core.checkpoint import load_model

    return load_model(str(test_models_root / TEST_MODEL_ID))


@pytest.fixture(scope="module")
def valid_files(model) -> dict[str, bytes]:
    """Small valid files: one tile and 2x2 tiles, each context mode."""
    files = {}
    for mode in ("grouped", "checkerboard"):
        for name, (height, width, tile) in {"one": (24, 40, 0), "tiled": (80, 100, 64)}.items():
            image = SourceImage(rgb=sample_pixels(height, width), color_mode="rgb", bit_depth=8)
            files[f"{name}-{mode}"] = encode_image(image, model, quality=4, context=mode, device="cpu", tile=tile)
    return files


# ------------------------------------------------------------------------ mutations


def split_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk of a valid file."""
    chunks, pos = [], len(SIGNATURE)
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        chunks.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += length + 12
    return chunks


def join_chunks(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return SIGNATURE + b"".join(
        struct.pack(">I", len(p)) + t + p + struct.pack(">I", zlib.crc32(t + p)) for t, p in chunks
    )


CHDR_FIELDS = {  # offset, struct format of fixed CHDR fields worth rewriting
    "width": (1, ">I"), "height": (5, ">I"), "color_mode": (9, ">B"), "context_mode": (12, ">B"),
    "quality": (15, ">d"), "tile_width": (31, ">I"), "tile_height": (35, ">I"), "tile_overlap": (39, ">H"),
    "latent_align": (41, ">H"),
}
HUGE = [0, 1, 63, 64, 65, 255, 0xFFFF, 1 << 16, 1 << 20, 1 << 24, (1 << 31) - 1, 0xFFFFFFFF]


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One random mutation of ``data``: (its name, the mutated bytes)."""
    kind = rng.choice(["flip", "flip", "truncate", "insert", "delete", "swap", "duplicate", "drop",
                       "field", "field", "stream", "stream", "length"])
    buf = bytearray(data)
    if kind == "flip":
        for _ in range(rng.randint(1, 3)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        return kind, bytes(buf)
    if kind == "truncate":
        return kind, data[: rng.randrange(len(data))]
    if kind == "insert":
        at = rng.randrange(len(buf) + 1)
        return kind, bytes(buf[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 16))) + buf[at:])
    if kind == "delete":
        at = rng.randrange(len(buf))
        return kind, bytes(buf[:at] + buf[at + rng.randint(1, 16) :])
    if kind == "length":  # a huge or wrong declared chunk length, CRC left alone
        pos = len(SIGNATURE) + 0 if rng.random() < 0.5 else data.rfind(b"CDAT") - 4
        struct.pack_into(">I", buf, pos, rng.choice(HUGE))
        return kind, bytes(buf)
    chunks = split_chunks(data)
    if kind == "swap":
        i, j = rng.randrange(len(chunks)), rng.randrange(len(chunks))
        chunks[i], chunks[j] = chunks[j], chunks[i]
    elif kind == "duplicate":
        i = rng.randrange(len(chunks))
        chunks.insert(rng.randrange(len(chunks) + 1), chunks[i])
    elif kind == "drop":
        del chunks[rng.randrange(len(chunks))]
    elif kind == "field":
        name = rng.choice(sorted(CHDR_FIELDS))
        offset, fmt = CHDR_FIELDS[name]
        payload = bytearray(chunks[0][1])
        size = struct.calcsize(fmt)
        value = rng.choice([float(v) for v in HUGE[:6]] + [float("nan"), 1e300]) if fmt == ">d" else rng.choice(HUGE)
        struct.pack_into(fmt, payload, offset, value if fmt == ">d" else value % (1 << (8 * size)))
        chunks[0] = (chunks[0][0], bytes(payload))
        kind = f"field {name}={value}"
    else:  # "stream": change bytes inside a tile, CRC recomputed, so the range decoder sees them
        tiles = [i for i, (t, _) in enumerate(chunks) if t == b"CDAT"]
        i = rng.choice(tiles)
        payload = bytearray(chunks[i][1])
        for _ in range(rng.randint(1, 4)):
            payload[rng.randrange(len(payload))] = rng.randrange(256)
        chunks[i] = (chunks[i][0], bytes(payload))
    return kind, join_chunks(chunks)


def decode_bytes(data: bytes, model) -> bytes:
    """What ``ccacodec decode - -o -`` does with ``data``: the PNG bytes, or a CodecError."""
    return encode_png(decode_image(data, model, device="cpu"))


# ---------------------------------------------------------------------------- tests


def test_mutated_files_end_in_documented_errors(valid_files, model):
    rng = random.Random(20241)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes: dict[str, int] = {}
    slowest = 0.0
    for name, data in valid_files.items():
        for case in range(CASES_PER_FILE):
            kind, mutated = mutate(data, rng)
            start = time.process_time()
            try:
                decode_bytes(mutated, model)
                outcome = "decoded"
            except errors.CodecError as exc:
                message = str(exc)
                assert exc.exit_code in DECODE_CODES, f"{name} case {case} ({kind}): {exc!r}"
                assert message and "\n" not in message, f"{name} case {case} ({kind}): {message!r}"
                outcome = f"exit {exc.exit_code}"
            slowest = max(slowest, time.process_time() - start)
            assert slowest < SECONDS_PER_CASE, f"{name} case {case} ({kind}) took {slowest:.1f} CPU s"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert growth_mib < 512, f"peak memory grew by {growth_mib:.0f} MiB"
    assert outcomes.get("exit 4", 0) > 0.8 * CASES_PER_FILE * len(valid_files), outcomes


def test_mutated_files_through_the_real_cli(valid_files, test_models_root, tmp_path):
    """A sample decoded by one real ``ccacodec decode`` run: one line per failure, no traceback,
    outputs only for files that decode; two more as single runs, checking their exit codes."""
    rng = random.Random(7)
    names = sorted(valid_files)
    cases = []
    for i in range(CLI_SAMPLE):
        _, mutated = mutate(valid_files[names[i % len(names)]], rng)
        path = tmp_path / f"case{i:02d}.cca"
        path.write_bytes(mutated)
        cases.append(path)
    out = tmp_path / "out"
    env = subprocess_env(test_models_root)
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    batch = ccacodec_process("decode", *cases, "-d", out, "--quiet", env=env, **pipes)
    singles = [ccacodec_process("decode", path, "-o", tmp_path / f"single{i}.png", env=env, **pipes)
               for i, path in enumerate(cases[:2])]
    stdout, stderr = batch.communicate(timeout=600)
    lines = stderr.decode().splitlines()
    assert stdout == b"" and "Traceback" not in stderr.decode(), stderr.decode()
    failures = lines[:-1]
    assert all(line.startswith("ccacodec: error: ") for line in failures), lines
    decoded = {p.stem for p in out.iterdir()} if out.exists() else set()
    assert lines[-1] == f"{CLI_SAMPLE} files, {CLI_SAMPLE - len(decoded)} failed"
    assert len(failures) == CLI_SAMPLE - len(decoded)
    assert batch.returncode in DECODE_CODES | {0}
    for i, single in enumerate(singles):
        single_out, single_err = single.communicate(timeout=600)
        written = (tmp_path / f"single{i}.png").exists()
        assert single.returncode in (DECODE_CODES if not written else {0}), single_err.decode()
        assert written == (cases[i].stem in decoded)
        assert single_out == b"" and len(single_err.decode().splitlines()) == 1
    assert not list(tmp_path.rglob("*.part"))


MANIFEST = json.loads((BAD / "manifest.json").read_text())


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_crafted_bad_files_are_refused(name, tmp_path):
    expected = MANIFEST[name]
    out = tmp_path / "x.png"
    result = run("decode", BAD / name, "-o", out)
    assert result.exit_code == expected["exit_code"], result.stderr
    line = error_line(result)
    assert line.startswith("ccacodec: error: ") and expected["message"] in line
    assert list(tmp_path.iterdir()) == []
    if expected["exit_code"] == errors.FormatError.exit_code:
        assert run("info", BAD / name).exit_code == errors.FormatError.exit_code


def test_corpus_is_what_the_script_makes():
    from make_bad_corpus import corpus

    made = corpus()
    assert sorted(made) == sorted(MANIFEST)
    for name, (data, code, message) in made.items():
        assert (BAD / name).read_bytes() == data, f"{name}: run tests/make_bad_corpus.py"
        assert MANIFEST[name] == {"exit_code": code, "message": message}


def test_declared_sizes_are_checked_before_allocation(model):
    """A header claiming a huge image is refused at once, whatever follows it."""
    data = (BAD / "bomb_65535x65535.cca").read_bytes()
    start = time.process_time()
    with pytest.raises(errors.FormatError, match="decompression-bomb"):
        decode_bytes(data, model)
    assert time.process_time() - start < 1.0
    assert np.iinfo(np.int64).max > 65535**2  # the product cannot overflow
