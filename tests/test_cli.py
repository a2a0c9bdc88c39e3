"""Tests of the ``ccacodec`` command line (cca_codec.cli), in-process and as real processes."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image

from cca_codec import __version__
from cca_codec.base import errors
from cca_codec.cli import cli
from cca_codec.cli import codec as cli_codec
from cca_codec.core import checkpoint, files
from cca_codec.core.checkpoint import DEFAULT_MODEL_ID, available_models, in_memory_model, save_model_dir

MODEL = "test-tiny"
REPO = Path(__file__).resolve().parents[1]
STATS_ENCODE = re.compile(r"^(.+) -> (.+): (\d+) bytes, (\d+\.\d{3}) bpp, (\d+\.\d{2}) s$")
STATS_DECODE = re.compile(r"^(.+) -> (.+): (\d+)x(\d+), (\d+\.\d{2}) s$")

pytestmark = pytest.mark.usefixtures("models_env", "one_torch_thread")



def run(*args: object, input: bytes | None = None) -> Result:
    """Invoke the CLI in-process."""
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


def error_line(result: Result) -> str:
    """The single stderr line of a failed run (asserting there is exactly one)."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def encode(src: Path, dst: Path, *extra: object) -> Result:
    result = run("encode", src, "-o", dst, "--model", MODEL, *extra)
    assert result.exit_code == 0, result.stderr
    return result


def pixels(path_or_bytes: Path | bytes) -> tuple[str, np.ndarray]:
    """(Pillow mode, pixel array) of an image file or PNG bytes."""
    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with Image.open(source) as img:
        return img.mode, np.asarray(img)


def subprocess_env(models_root: Path | None = None) -> dict[str, str]:
    """The test's environment with the repository importable (and ``models_root`` on
    ``CCACODEC_MODELS`` when given).

    OpenMP threads sleep rather than spin while waiting: on a loaded machine, spinning
    makes torch with 2 threads some 30 times slower (the pixels do not depend on it).
    """
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.pop("CCACODEC_DEBUG", None)
    if models_root is not None:
        env["CCACODEC_MODELS"] = str(models_root)
    return env


def ccacodec_process(*args: object, env: dict[str, str], **popen: object) -> subprocess.Popen:
    """Start ``python -m cca_codec ARGS`` as a real process."""
    command = [sys.executable, "-m", "cca_codec", *(str(a) for a in args)]
    return subprocess.Popen(command, env=env, **popen)  # type: ignore[call-overload]


# ------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("context", ["grouped", "checkerboard"])
@pytest.mark.parametrize("size", [(1, 1), (17, 33), (64, 64), (96, 160)])
def test_round_trip(make_image, tmp_path, size, context):
    height, width = size
    src = make_image(height, width, name="source.png")
    first, second = tmp_path / "x.cca", tmp_path / "again.cca"
    result = encode(src, first, "--context", context, "-q", "3")
    assert result.stdout == ""
    stats = STATS_ENCODE.match(result.stderr.strip())
    assert stats, result.stderr
    assert stats.group(1, 2) == (str(src), str(first))
    assert int(stats.group(3)) == first.stat().st_size

    encode(src, second, "--context", context, "-q", "3")
    assert first.read_bytes() == second.read_bytes()

    info = run("info", "--json", first)
    assert info.exit_code == 0, info.stderr
    description = json.loads(info.stdout)
    header = description["header"]
    assert (header["context_mode"], header["quality"], header["model_id"]) == (context, 3.0, MODEL)
    assert (header["width"], header["height"]) == (width, height)
    assert description["file"] == str(first)
    assert description["bpp"] == pytest.approx(8 * first.stat().st_size / (width * height))

    decoded = run("decode", first)  # default output x.png; model found by the id in the file
    assert decoded.exit_code == 0, decoded.stderr
    assert decoded.stdout == ""
    stats = STATS_DECODE.match(decoded.stderr.strip())
    assert stats and stats.group(2, 3, 4) == (str(tmp_path / "x.png"), str(width), str(height)), decoded.stderr
    mode, array = pixels(tmp_path / "x.png")
    assert mode == "RGB" and array.shape == (height, width, 3)


def test_encode_defaults_and_json(make_image, tmp_path):
    src = make_image(17, 33)
    result = run("encode", src, "--model", MODEL, "--json")  # default output: src with .cca
    assert result.exit_code == 0, result.stderr
    out = src.with_suffix(".cca")
    record = json.loads(result.stdout)
    assert result.stdout.count("\n") == 1
    assert record == {
        "input": str(src), "output": str(out), "bytes": out.stat().st_size,
        "bpp": pytest.approx(8 * out.stat().st_size / (17 * 33)), "width": 33, "height": 17,
        "quality": 4.0, "context": "checkerboard", "effort": 1, "seconds": record["seconds"], "notes": [],
    }
    assert STATS_ENCODE.match(result.stderr.strip())


def test_quiet_prints_nothing(make_image, tmp_path):
    src = make_image(8, 8)
    result = encode(src, tmp_path / "q.cca", "--quiet")
    assert (result.stdout, result.stderr) == ("", "")


def test_notes_are_printed(tmp_path):
    src = tmp_path / "palette.png"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert("P").save(src)
    result = encode(src, tmp_path / "p.cca")
    assert "note: palette image coded as RGB" in result.stderr.splitlines()


def test_grayscale_decodes_to_grayscale(make_image, tmp_path):
    src = make_image(17, 33, mode="L")
    encode(src, tmp_path / "g.cca")
    assert run("decode", tmp_path / "g.cca", "-o", tmp_path / "g.png").exit_code == 0
    mode, array = pixels(tmp_path / "g.png")
    assert mode == "L" and array.shape == (17, 33)


def test_alpha_is_kept_exactly(make_image, tmp_path):
    src = make_image(17, 33, mode="RGBA")
    encode(src, tmp_path / "a.cca")
    assert run("decode", tmp_path / "a.cca", "-o", tmp_path / "a.png").exit_code == 0
    _, original = pixels(src)
    mode, array = pixels(tmp_path / "a.png")
    assert mode == "RGBA"
    np.testing.assert_array_equal(array[..., 3], original[..., 3])


def test_decode_with_explicit_model(make_image, models_env, tmp_path):
    src = make_image(17, 33)
    encode(src, tmp_path / "m.cca")
    result = run("decode", tmp_path / "m.cca", "-o", tmp_path / "m.png", "--model", models_env / MODEL)
    assert result.exit_code == 0, result.stderr


@dataclass
class RealRuns:
    """What three concurrent ``python -m cca_codec`` processes produced from one image."""

    cca: Path  # the image encoded in-process
    pipeline_png: bytes  # encode - -o - | decode - -o - --threads 1
    pipeline_stderr: tuple[str, str]  # (encoder's, decoder's)
    threads2_png: Path  # decode CCA -o threads2.png --threads 2


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory, test_models_root, image_writer) -> RealRuns:
    """Run the real-process checks at the same time (each process spends seconds importing torch)."""
    directory = tmp_path_factory.mktemp("real")
    src = image_writer(directory, 96, 160, name="src.png")
    cca, threads2_png = directory / "src.cca", directory / "threads2.png"
    encode(src, cca, "--model", test_models_root / MODEL)
    env = subprocess_env(test_models_root)
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    threads2 = ccacodec_process("decode", cca, "-o", threads2_png, "--threads", 2, env=env, **pipes)
    encoder = ccacodec_process("encode", "-", "-o", "-", "--model", MODEL, "--threads", 1,
                               env=env, stdin=subprocess.PIPE, **pipes)
    decoder = ccacodec_process("decode", "-", "-o", "-", "--threads", 1,
                               env=env, stdin=encoder.stdout, **pipes)
    encoder.stdout.close()  # the decoder holds that pipe now
    encoder.stdin.write(src.read_bytes())
    encoder.stdin.close()
    png, decode_err = decoder.communicate(timeout=300)
    encode_err = encoder.stderr.read()
    encoder.stderr.close()
    threads2_out, threads2_err = threads2.communicate(timeout=300)
    assert encoder.wait(timeout=60) == 0, encode_err.decode()
    assert decoder.returncode == 0, decode_err.decode()
    assert threads2.returncode == 0 and threads2_out == b"", threads2_err.decode()
    return RealRuns(cca, png, (encode_err.decode(), decode_err.decode()), threads2_png)


def test_stdin_stdout_pipeline(real_runs):
    """``encode - -o - | decode - -o -`` in real processes gives what in-process coding gives."""
    encode_err, decode_err = real_runs.pipeline_stderr
    assert STATS_ENCODE.match(encode_err.strip()).group(1, 2) == ("standard input", "standard output")
    stats = STATS_DECODE.match(decode_err.strip())  # one line: no warning, no traceback
    assert stats.group(1, 2, 3, 4) == ("standard input", "standard output", "160", "96")
    result = run("decode", real_runs.cca, "-o", "-")
    assert result.exit_code == 0, result.stderr
    np.testing.assert_array_equal(pixels(real_runs.pipeline_png)[1], pixels(result.stdout_bytes)[1])


def test_threads_give_identical_pixels(real_runs):
    """Decoding in real processes with torch using 1 and 2 threads gives the same pixels."""
    mode, one_thread = pixels(real_runs.pipeline_png)
    assert mode == "RGB" and one_thread.shape == (96, 160, 3)
    np.testing.assert_array_equal(one_thread, pixels(real_runs.threads2_png)[1])


def test_in_process_stdin_stdout(make_image):
    src = make_image(17, 33)
    encoded = run("encode", "-", "-o", "-", "--model", MODEL, input=src.read_bytes())
    assert encoded.exit_code == 0, encoded.stderr
    assert encoded.stdout_bytes.startswith(b"\x89CCA")
    decoded = run("decode", "-", "-o", "-", input=encoded.stdout_bytes)
    assert decoded.exit_code == 0, decoded.stderr
    mode, array = pixels(decoded.stdout_bytes)
    assert mode == "RGB" and array.shape == (17, 33, 3)


def test_threads_option_sets_torch_threads(tmp_path):
    before = torch.get_num_threads()
    try:
        result = run("encode", tmp_path / "missing.png", "--model", MODEL, "--threads", 3)
        assert result.exit_code == 3  # the threads are set before any file is looked at
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_leave_process_flushes_streams_and_runs_atexit_handlers():
    code = (
        "import atexit, sys\n"
        "from cca_codec.base import runtime\n"
        "atexit.register(lambda: sys.stderr.write('atexit ran'))\n"
        "sys.stdout.write('no newline, still buffered')\n"
        "runtime.leave_process(7)\n"
    )
    env = subprocess_env()
    env.pop("PYTHONUNBUFFERED", None)  # stdout is a pipe: block-buffered, so only a flush writes it
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120)
    assert done.returncode == 7
    assert done.stdout == b"no newline, still buffered"
    assert done.stderr.endswith(b"atexit ran")


def test_help_and_version_do_not_need_torch():
    code = (
        "import sys\n"
        "from cca_codec.cli import main\n"
        "try:\n    main(['encode', '--help'])\n"
        "except SystemExit as exc:\n    assert exc.code == 0\n"
        "assert 'torch' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert b"--quality" in done.stdout

    result = run("--version")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == f"ccacodec {__version__}"
    assert lines[1].startswith("torch ") and lines[2].startswith("constriction ")


def test_passthrough_commands_get_their_arguments_verbatim(monkeypatch):
    """`ccacodec train-bg start -- FLAGS` reaches the argparse side with its `--` (click's parser drops it)."""
    from cca_codec.training import background

    seen: list[tuple[list[str], str]] = []
    monkeypatch.setattr(background, "main", lambda argv, prog: seen.append((argv, prog)))
    assert run("train-bg", "start", "--", "--lr", "3e-5", "--help").exit_code == 0
    assert run("train-bg", "--help").exit_code == 0
    assert seen == [(["start", "--", "--lr", "3e-5", "--help"], "ccacodec train-bg"), (["--help"], "ccacodec train-bg")]

    from cca_codec.training import train

    monkeypatch.setattr(train, "main", lambda argv, prog: seen.append((argv, prog)))
    assert run("train", "--data", "pack", "--help").exit_code == 0
    assert seen[-1] == (["--data", "pack", "--help"], "ccacodec train")


def test_import_cca_codec_loads_no_torch_and_the_api_on_first_use():
    """`import cca_codec` (and the command line's modules) stay free of torch and NumPy; the public API
    is imported from its modules when first used."""
    code = (
        "import sys\n"
        "import cca_codec, cca_codec.cli\n"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, 'eager import'\n"
        "from cca_codec import Target, encode_image, load_image\n"
        "from cca_codec.core.codec import encode_image as defined\n"
        "assert encode_image is defined and Target('bpp', 0.5).value == 0.5\n"
        "assert set(cca_codec.__all__) <= set(dir(cca_codec))\n"
        "try:\n    cca_codec.no_such_name\nexcept AttributeError:\n    pass\nelse:\n    raise SystemExit('no AttributeError')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()


def test_the_cli_lists_of_choices_match_the_library():
    """The cli names precisions and classical codecs without importing their (torch, NumPy) modules."""
    from cca_codec.cli import common
    from cca_codec.core.precision import PRECISIONS
    from cca_codec.measure.classical import CODECS

    assert common.PRECISIONS == PRECISIONS
    assert common.CLASSICAL_CODECS == tuple(CODECS)


def test_the_cli_modules_are_small_and_leave_the_work_to_the_library():
    """One module per command family, none over 600 lines; none runs child processes or reads model.json itself."""
    folder = REPO / "cca_codec" / "cli"
    for path in folder.glob("*.py"):
        text = path.read_text()
        assert len(text.splitlines()) <= 600, path.name
        assert "subprocess" not in text and "json.loads" not in text, path.name
    assert not (REPO / "cca_codec" / "cli.py").exists()


# ----------------------------------------------------------------------------- errors


def test_missing_input(tmp_path):
    result = run("encode", tmp_path / "missing.png", "--model", MODEL)
    assert result.exit_code == errors.InputError.exit_code == 3
    assert error_line(result).startswith("ccacodec: error: ")
    assert "missing.png" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_non_image_input(tmp_path):
    src = tmp_path / "text.png"
    src.write_text("this is not an image\n")
    result = run("encode", src, "--model", MODEL)
    assert result.exit_code == 3
    assert error_line(result).startswith("ccacodec: error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text.png"]


def _truncated(data: bytes) -> bytes:
    return data[: len(data) - 30]


def _flipped(data: bytes) -> bytes:
    corrupt = bytearray(data)
    corrupt[len(data) // 2] ^= 0x10
    return bytes(corrupt)


def _bad_signature(data: bytes) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + data[8:]


@pytest.mark.parametrize("damage", [_truncated, _flipped, _bad_signature])
def test_corrupt_cca(make_image, tmp_path, damage):
    good = tmp_path / "good.cca"
    encode(make_image(17, 33), good)
    bad = tmp_path / "bad.cca"
    bad.write_bytes(damage(good.read_bytes()))
    before = set(tmp_path.iterdir())
    for args in (("decode", bad), ("info", bad)):
        result = run(*args)
        assert result.exit_code == errors.FormatError.exit_code == 4
        assert error_line(result).startswith("ccacodec: error: ")
        assert result.stdout == ""
    assert set(tmp_path.iterdir()) == before  # no bad.png, no temporary file


def test_unknown_model(make_image):
    result = run("encode", make_image(8, 8), "--model", "does-not-exist")
    assert result.exit_code == errors.ModelError.exit_code == 5
    assert "does-not-exist" in error_line(result)


def test_default_model_missing(make_image, tmp_path, monkeypatch):
    empty = tmp_path / "no-models"
    empty.mkdir()
    monkeypatch.setattr(checkpoint, "model_search_path", lambda: [empty])
    assert DEFAULT_MODEL_ID not in available_models()
    result = run("encode", make_image(8, 8))
    assert result.exit_code == 5
    assert DEFAULT_MODEL_ID in error_line(result)


def test_wrong_model_for_file(make_image, tmp_path):
    encode(make_image(17, 33), tmp_path / "w.cca")
    other = in_memory_model("cca-tiny", seed=1, model_id=MODEL)
    save_model_dir(other, tmp_path / "other", dtype=torch.float32)
    result = run("decode", tmp_path / "w.cca", "--model", tmp_path / "other")
    assert result.exit_code == 5
    assert error_line(result).startswith("ccacodec: error: ")
    assert not (tmp_path / "w.png").exists()


def test_a_file_made_with_replaced_weights_names_them(make_image, tmp_path):
    """A model directory whose weights were updated (a stint) keeps the earlier sha256 in
    weights_history.json; a file made with them is refused with a message saying which they were."""
    first = in_memory_model("cca-tiny", seed=1, model_id="upd")
    directory = save_model_dir(first, tmp_path / "upd", dtype=torch.float32, info={"total_steps": 4321, "total_cpu_minutes": 12.5})
    encode_with = run("encode", make_image(17, 33), "-o", tmp_path / "old.cca", "--model", directory)
    assert encode_with.exit_code == 0, encode_with.stderr
    checkpoint.record_replaced_weights(directory, "2026-12-05")
    checkpoint.record_replaced_weights(directory, "2026-12-06")  # the same weights again: recorded once
    save_model_dir(in_memory_model("cca-tiny", seed=2, model_id="upd"), directory, dtype=torch.float32)
    history = checkpoint.earlier_weights(directory)
    assert list(history) == [first.weights_sha256.hex()]
    assert history[first.weights_sha256.hex()] == {"weights_sha256": first.weights_sha256.hex(), "replaced": "2026-12-05",
                                                   "total_steps": 4321, "total_cpu_minutes": 12.5}
    result = run("decode", tmp_path / "old.cca", "--model", directory)
    assert result.exit_code == 5 and not (tmp_path / "old.png").exists()
    line = error_line(result)
    assert f"weights {first.weights_sha256.hex()[:12]} (its weights until 2026-12-05, 4,321 training steps)" in line
    assert line.endswith("decode it with the model directory of those weights (--model DIR)")
    (directory / checkpoint.WEIGHTS_HISTORY_FILE).write_text("not json")  # a damaged history only loses the hint
    assert "its weights until" not in error_line(run("decode", tmp_path / "old.cca", "--model", directory))


@pytest.mark.parametrize("quality", ["0", "99"])
def test_quality_out_of_range(make_image, tmp_path, quality):
    result = run("encode", make_image(8, 8), "-o", tmp_path / "q.cca", "--model", MODEL, "-q", quality)
    assert result.exit_code == errors.UsageError.exit_code == 2
    assert "quality" in error_line(result)
    assert not (tmp_path / "q.cca").exists()


@pytest.mark.parametrize("command", ["encode", "decode"])
def test_no_overwrite(make_image, tmp_path, command):
    src = make_image(8, 8)
    cca = tmp_path / "n.cca"
    encode(src, cca)
    target = cca if command == "encode" else tmp_path / "n.png"
    target.write_bytes(b"keep me")
    before = set(tmp_path.iterdir())
    result = run(command, src if command == "encode" else cca, "-o", target, "--no-overwrite", "--model", MODEL)
    assert result.exit_code == 3
    assert "exists" in error_line(result)
    assert target.read_bytes() == b"keep me"
    assert set(tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    "args",
    [
        ("encode", "IN", "-o", "-", "--json"),
        ("encode", "IN", "IN2", "-o", "out.cca"),
        ("encode", "-"),
        ("encode", "IN", "-o", "x.cca", "-d", "dir"),
        ("encode", "IN", "--context", "spiral"),
        ("decode", "IN", "IN2", "-o", "out.png"),
        ("decode", "IN", "--max-pixels", "0"),
    ],
)
def test_usage_errors(make_image, tmp_path, args):
    names = {"IN": str(make_image(8, 8, name="in.png")), "IN2": str(make_image(8, 8, name="in2.png"))}
    result = run(*(names.get(a, a) for a in args), "--model", MODEL)
    assert result.exit_code == 2, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


def test_internal_error_is_one_line(make_image, tmp_path, monkeypatch):
    def broken(*_args, **_kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(files, "encode_image", broken)
    result = run("encode", make_image(8, 8), "-o", tmp_path / "i.cca", "--model", MODEL)
    assert result.exit_code == 1
    line = error_line(result)
    assert line.startswith("ccacodec: internal error: ")
    assert line.endswith(": RuntimeError: boom; second line")

    monkeypatch.setenv("CCACODEC_DEBUG", "1")
    result = run("encode", make_image(8, 8), "-o", tmp_path / "i.cca", "--model", MODEL)
    assert result.exit_code == 1 and "Traceback" in result.stderr


def test_interrupt_exits_130(make_image, tmp_path, monkeypatch):
    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(files, "encode_image", interrupted)
    result = run("encode", make_image(8, 8), "-o", tmp_path / "k.cca", "--model", MODEL)
    assert result.exit_code == errors.EXIT_INTERRUPTED == 130
    assert error_line(result) == "ccacodec: interrupted"


# ---------------------------------------------------------------------- several files


def test_several_inputs_with_one_bad(make_image, tmp_path):
    good = [make_image(8, 8, name="a.png"), make_image(17, 33, name="b.png")]
    bad = tmp_path / "c.png"
    bad.write_bytes(b"not a png")
    out = tmp_path / "out"
    result = run("encode", good[0], bad, good[1], "-d", out, "--model", MODEL)
    assert result.exit_code == 3
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[-1] == "3 files, 1 failed"
    assert sum(line.startswith("ccacodec: error: ") for line in lines) == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.cca", "b.cca"]

    corrupt = out / "z.cca"
    corrupt.write_bytes(b"\x89CCA\r\n\x1a\n")
    decoded = run("decode", out / "a.cca", corrupt, out / "b.cca", "-d", tmp_path / "png", "--quiet")
    assert decoded.exit_code == 4
    assert decoded.stderr.splitlines()[-1] == "3 files, 1 failed"
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["a.png", "b.png"]


# ------------------------------------------------------------------------ info, models


def test_info_human_output(make_image, tmp_path):
    cca = tmp_path / "h.cca"
    encode(make_image(17, 33, mode="RGBA"), cca, "--context", "grouped")
    result = run("info", cca)
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    for expected in ("width: 33", "height: 17", "context_mode: grouped", f"model_id: {MODEL}",
                     "alpha: yes", "tile 0: ", "overhead: ", f"{cca.stat().st_size} bytes"):
        assert expected in text


def test_models_lists_the_test_model(models_env):
    result = run("models")
    assert result.exit_code == 0, result.stderr
    assert f"{MODEL}: {models_env / MODEL}" in result.stdout
    assert "configuration: cca-tiny" in result.stdout
    listing = json.loads(run("models", "--json").stdout)
    entry = next(m for m in listing["models"] if m["id"] == MODEL)
    assert entry["config"] == "cca-tiny" and len(entry["qualities"]) == 8
    assert all(q["lambda"] > 0 for q in entry["qualities"])


def test_models_says_when_none_is_installed(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "model_search_path", lambda: [tmp_path])
    assert not available_models()
    result = run("models")
    assert result.exit_code == 0
    assert "no models installed" in result.stdout and str(tmp_path) in result.stdout


def test_exit_code_tables_list_every_code():
    """errors.py's table (the one the code keeps) and README's (the one users read) name every code."""
    classes = {errors.CodecError, errors.UsageError, errors.InputError, errors.FormatError, errors.ModelError}
    codes = {0, errors.EXIT_INTERRUPTED} | {c.exit_code for c in classes}
    in_module = {int(m.group(1)) for m in re.finditer(r"^\s*(\d+)\s{2,}\S", errors.__doc__, re.M)}
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    in_readme = {int(m.group(1)) for m in re.finditer(r"^\| (\d+) \|", readme, re.M)}
    assert codes == in_module
    assert codes == in_readme


# ---------------------------------------------------------- tiles, limits, jobs, signals


def test_tiled_file_through_the_cli(make_image, tmp_path):
    src = make_image(100, 150)
    cca = tmp_path / "t.cca"
    encode(src, cca, "--tile", 64)
    summary = json.loads(run("info", "--json", cca).stdout)
    assert summary["tile_grid"] == [2, 3] and summary["header"]["tile_overlap"] > 0
    result = run("decode", cca, "-o", tmp_path / "t.png")
    assert result.exit_code == 0, result.stderr
    assert pixels(tmp_path / "t.png")[1].shape == (100, 150, 3)
    assert run("encode", src, "-o", tmp_path / "u.cca", "--model", MODEL, "--tile", 100).exit_code == 2


def test_exif_and_icc_reach_the_decoded_png(tmp_path):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "ccacodec test camera"
    src = tmp_path / "meta.jpg"
    Image.fromarray(np.full((16, 24, 3), 120, np.uint8)).save(src, exif=exif, icc_profile=icc)
    encode(src, tmp_path / "meta.cca")
    assert run("decode", tmp_path / "meta.cca", "-o", tmp_path / "meta.png").exit_code == 0
    with Image.open(tmp_path / "meta.png") as out:
        assert out.info["icc_profile"] == icc
        assert out.getexif()[0x010F] == "ccacodec test camera"


def test_max_pixels_guards_encode_and_decode(make_image, tmp_path):
    src = make_image(17, 33)
    result = run("encode", src, "-o", tmp_path / "m.cca", "--model", MODEL, "--max-pixels", 560)
    assert result.exit_code == errors.InputError.exit_code
    assert "exceeds limit of 560 pixels" in error_line(result)
    encode(src, tmp_path / "m.cca", "--max-pixels", 561)
    result = run("decode", tmp_path / "m.cca", "--max-pixels", 560)
    assert result.exit_code == errors.FormatError.exit_code
    assert "over the limit of 560 pixels" in error_line(result)
    assert not (tmp_path / "m.png").exists()


def test_jobs_run_files_in_parallel_processes(image_writer, test_models_root, tmp_path):
    good = [image_writer(tmp_path, 8, 8, name="a.png"), image_writer(tmp_path, 17, 33, name="b.png")]
    bad = tmp_path / "c.png"
    bad.write_bytes(b"not a png")
    out = tmp_path / "out"
    process = ccacodec_process("encode", good[0], bad, good[1], "-d", out, "--model", MODEL, "--jobs", 2,
                               env=subprocess_env(test_models_root), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = process.communicate(timeout=300)
    lines = stderr.decode().splitlines()
    assert process.returncode == 3, stderr.decode()
    assert stdout == b"" and "Traceback" not in stderr.decode()
    assert lines[-1] == "3 files, 1 failed"
    assert sum(line.startswith("ccacodec: error: ") and "c.png" in line for line in lines) == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.cca", "b.cca"]


def test_option_args_for_child_processes(make_image, monkeypatch):
    """--jobs passes the command's own options on to each child, without inputs and outputs."""
    import click

    seen = {}

    def fake_children(jobs, processes, bar):
        seen["args"] = cli_codec.option_args(click.get_current_context(), processes)
        return [0] * len(jobs)

    monkeypatch.setattr(cli_codec, "run_children", fake_children)
    result = run("encode", make_image(8, 8, name="x.png"), make_image(8, 8, name="y.png"), "--model", MODEL,
                 "-q", 3, "--tile", 64, "--no-overwrite", "--jobs", 2, "--threads", 1)
    assert result.exit_code == 0, result.stderr
    args = seen["args"]
    assert args[args.index("--quality") + 1] == "3.0" and args[args.index("--tile") + 1] == "64"
    assert "--no-overwrite" in args and args[args.index("--threads") + 1] == "1"
    assert "--jobs" not in args and "--output-dir" not in args and "--json" not in args


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _child_cpu_seconds(run_child) -> float:
    """CPU seconds that the child processes started by ``run_child()`` used."""
    import resource

    def used() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    before = used()
    run_child()
    return used() - before


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the encoder's CPU time from /proc")
def test_ctrl_c_leaves_no_partial_file(image_writer, test_models_root, tmp_path):
    """SIGINT while a large image is being encoded: exit 130, one line, no output or temporary file."""
    import signal
    import time

    env = subprocess_env(test_models_root)
    start_up = _child_cpu_seconds(lambda: subprocess.run([sys.executable, "-m", "cca_codec", "models"], env=env,
                                                         capture_output=True, check=True))
    src = image_writer(tmp_path, 2048, 2048, name="large.png")
    # SIGINT's default action in the encoder whatever this run inherited: a test run started as a background
    # job (`cmd &` in a script) ignores SIGINT, and so, rightly, would an encoder it starts.
    process = ccacodec_process("encode", src, "-o", tmp_path / "large.cca", "--model", MODEL, "--tile", 256,
                               "--threads", 1, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # Past the start-up (imports, model) by CPU time, which a busy machine stretches far less than wall
    # time, and well inside the encoding (64 tiles: several CPU seconds).
    while process.poll() is None and _cpu_seconds(process.pid) < start_up + 1.0:
        time.sleep(0.05)
    assert process.poll() is None, "the encoder finished before it could be interrupted"
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == errors.EXIT_INTERRUPTED, stderr.decode()
    assert stderr.decode().splitlines() == ["ccacodec: interrupted"] and stdout == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["large.png"]
