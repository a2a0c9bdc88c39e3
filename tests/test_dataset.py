"""Coding a dataset on Ray Data (cca_codec.dataset, `ccacodec encode-dataset` / `decode-dataset`).

One local Ray instance (`ray.init(num_cpus=2)`) serves the module. The dataset is a few hundred
small generated images (16..48 pixels a side; RGB, gray and RGBA) in nested folders, plus broken
files. Every output is checked against what `encode_image` / `decode_image` give for the same file
(the functions `ccacodec encode` / `decode` run; a CLI run checks that too).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from click.testing import CliRunner
from conftest import lively_model, write_image
from PIL import Image

from cca_codec.base.errors import UsageError
from cca_codec.cli import cli
from cca_codec.core.checkpoint import load_model, save_model_dir
from cca_codec.core.codec import decode_image, encode_image
from cca_codec.dataset import RayOptions, decode_dataset, encode_dataset, engine
from cca_codec.dataset.manifest import FIELDS, MANIFEST_NAME, read_manifest, write_manifest
from cca_codec.dataset.plan import Source, make_plan
from cca_codec.image.io import IMAGE_SUFFIXES, encode_png, load_image

MODEL_ID = "test-lively"
QUALITY = 3.0
IMAGES = 240
BROKEN = {
    "broken/garbage.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
    "broken/empty.jpg": b"",
    "broken/text.webp": b"this is not an image\n",
}
TRUNCATED = "broken/truncated.png"
CLASH = ("clash/same.jpg", "clash/same.png")  # both would be clash/same.cca: the second fails
MODES = ("RGB",) * 8 + ("L", "RGBA")


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model search root holding the lively test model as directory ``test-lively``."""
    root = tmp_path_factory.mktemp("dataset-models")
    save_model_dir(lively_model(MODEL_ID), root / MODEL_ID, dtype=torch.float32)
    return root


@pytest.fixture(scope="module")
def model(model_root: Path):
    """The test model as the workers load it."""
    return load_model(model_root / MODEL_ID)


@pytest.fixture(scope="module", autouse=True)
def ray_session(model_root: Path):
    """A local Ray instance with 2 CPUs whose workers find the test model by id; this process
    codes its references with one torch thread, as each worker does (faster on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CCACODEC_MODELS", str(model_root))
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()
            torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SRC: IMAGES small images in nested folders, broken files, an output clash, and files
    that are not sources (hidden, other extensions)."""
    root = tmp_path_factory.mktemp("src")
    rng = np.random.default_rng(14)
    for index in range(IMAGES):
        folder = root / f"set{index % 3}" / ("deep" if index % 5 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        height, width = (int(v) for v in rng.integers(16, 49, size=2))
        write_image(folder, height, width, MODES[index % len(MODES)], name=f"img{index:03d}.png")
    for name, data in BROKEN.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    whole = write_image(root / "broken", 40, 40, name="whole.png").read_bytes()
    (root / "broken" / "whole.png").unlink()
    (root / TRUNCATED).write_bytes(whole[: len(whole) // 2])
    (root / "clash").mkdir()
    Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(root / CLASH[0], quality=95)
    write_image(root / "clash", 20, 24, name="same.png")
    (root / ".hidden.png").write_bytes(b"skipped")
    (root / "set0" / "README.txt").write_text("not an image\n")
    return root


@pytest.fixture(scope="module")
def encoded(src: Path, model_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """DST of an encode_dataset run over ``src`` and its summary."""
    dst = tmp_path_factory.mktemp("dst")
    summary = encode_dataset(src, dst, quality=QUALITY, model=str(model_root / MODEL_ID))
    return dst, summary


def _images(src: Path, count: int) -> list[str]:
    """The first ``count`` generated images of ``src`` (no broken file among them)."""
    return [p for p in sorted(_sources(src)) if p.startswith("set")][:count]


def _sources(src: Path) -> set[str]:
    """The relative paths encode-dataset should see under ``src``."""
    return {
        p.relative_to(src).as_posix() for p in src.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    }


def test_every_output_is_what_encode_image_gives(src: Path, encoded, model) -> None:
    dst, summary = encoded
    records = read_manifest(dst / MANIFEST_NAME)
    ok = [r for r in records.values() if r["status"] == "ok"]
    assert len(ok) == IMAGES + 1 == summary.coded  # + the first of the clashing pair
    for record in ok:
        image = load_image(src / record["path"])
        expected = encode_image(image, model, quality=QUALITY, context="checkerboard", device="cpu")
        data = (dst / record["output"]).read_bytes()
        assert data == expected, record["path"]
        assert record["bytes"] == len(data)
        assert (record["width"], record["height"]) == (image.width, image.height)
        assert record["bpp"] == pytest.approx(8 * len(data) / (image.width * image.height))
        assert (record["quality"], record["context"], record["model"]) == (QUALITY, "checkerboard", MODEL_ID)
    assert not list(dst.rglob(".*.part")), "no temporary file is left behind"


def test_manifest_has_every_file_and_the_failures(src: Path, encoded) -> None:
    dst, summary = encoded
    lines = (dst / MANIFEST_NAME).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["path"] for r in records] == sorted(_sources(src)), "one record per source, sorted"
    assert all(list(r) == list(FIELDS) for r in records)
    failed = {r["path"]: r for r in records if r["status"] == "failed"}
    assert set(failed) == {*BROKEN, TRUNCATED, CLASH[1]}
    for path, record in failed.items():
        assert record["exit_code"] == 3 and "\n" not in record["error"]
        assert str(src / path) in record["error"]
    assert "empty" in failed["broken/empty.jpg"]["error"]
    assert "also that of clash/same.jpg" in failed[CLASH[1]]["error"]
    assert summary.total == len(records) and summary.failed == len(failed) and summary.exit_code == 3
    assert [f["path"] for f in summary.failures] == sorted(failed)


def test_cli_encode_gives_the_same_files(src: Path, encoded, model_root: Path, tmp_path: Path) -> None:
    dst, _ = encoded
    picked = sorted(p for p in _sources(src) if p.startswith("set1/deep/"))[:4] + ["set2/img002.png"]
    env = {**os.environ, "CCACODEC_MODELS": str(model_root)}
    command = [sys.executable, "-m", "cca_codec", "encode", *(str(src / p) for p in picked)]
    subprocess.run([*command, "-d", str(tmp_path), "-q", str(QUALITY), "--model", MODEL_ID, "--quiet"], env=env, check=True)
    for path in picked:
        name = Path(path).with_suffix(".cca").name
        assert (tmp_path / name).read_bytes() == (dst / Path(path).with_suffix(".cca")).read_bytes(), path


def test_rerun_skips_what_is_done(src: Path, model_root: Path, tmp_path: Path) -> None:
    small = tmp_path / "src"
    for path in _images(src, 12) + [TRUNCATED]:
        (small / path).parent.mkdir(parents=True, exist_ok=True)
        (small / path).write_bytes((src / path).read_bytes())
    dst = tmp_path / "dst"
    model_dir = str(model_root / MODEL_ID)
    first = encode_dataset(small, dst, quality=QUALITY, model=model_dir)
    assert (first.coded, first.skipped, first.failed) == (12, 0, 1)
    before = {p: p.stat().st_mtime_ns for p in dst.rglob("*.cca")}
    records = read_manifest(dst / MANIFEST_NAME)
    done = sorted(p for p, r in records.items() if r["status"] == "ok")
    changed, removed = done[0], done[1]
    write_image((small / changed).parent, 33, 17, name=Path(changed).name)  # new pixels, new mtime
    (dst / records[removed]["output"]).unlink()

    second = encode_dataset(small, dst, quality=QUALITY, model=model_dir)
    assert (second.coded, second.skipped, second.failed) == (2, 10, 1)
    assert second.total == 13 and [f["path"] for f in second.failures] == [TRUNCATED]
    for path, mtime in before.items():
        rel = path.relative_to(dst).with_suffix(".png").as_posix()
        if rel not in (changed, removed):
            assert path.stat().st_mtime_ns == mtime, f"{rel} was coded again"
    assert read_manifest(dst / MANIFEST_NAME)[changed]["height"] == 33
    assert len((dst / MANIFEST_NAME).read_text().splitlines()) == 13, "the manifest is compacted"

    other_quality = encode_dataset(small, dst, quality=QUALITY + 1, model=model_dir)
    assert (other_quality.coded, other_quality.skipped) == (12, 0), "other settings: everything is redone"


def test_decode_dataset_gives_what_decode_image_gives(encoded, model, tmp_path: Path) -> None:
    dst, _ = encoded
    (dst / "broken").mkdir(exist_ok=True)
    (dst / "broken" / "corrupt.cca").write_bytes(b"CCA1" + bytes(40))
    out = tmp_path / "decoded"
    summary = decode_dataset(dst, out)
    records = read_manifest(out / MANIFEST_NAME)
    ok = [r for r in records.values() if r["status"] == "ok"]
    assert len(ok) == IMAGES + 1 == summary.coded
    for record in ok:
        data = (dst / record["path"]).read_bytes()
        assert (out / record["output"]).read_bytes() == encode_png(decode_image(data, model, device="cpu")), record["path"]
        assert record["bpp"] == pytest.approx(8 * len(data) / (record["width"] * record["height"]))
    failed = [r for r in records.values() if r["status"] == "failed"]
    assert [r["path"] for r in failed] == ["broken/corrupt.cca"] and failed[0]["exit_code"] == 4
    modes = {Image.open(out / r["output"]).mode for r in ok}
    assert modes == {"RGB", "L", "RGBA"}, "gray and alpha come back as they went in"
    (dst / "broken" / "corrupt.cca").unlink()


def test_a_file_ray_loses_gets_a_failed_record(src: Path, model_root: Path, tmp_path: Path, monkeypatch) -> None:
    small = tmp_path / "src"
    small.mkdir()
    write_image(small, 20, 20, name="here.png")

    def with_phantom(*args, **kwargs):
        plan = make_plan(*args, **kwargs)
        plan.todo.append(Source("gone.png", 100, 0))  # listed, then removed before Ray reads it
        return plan

    monkeypatch.setattr(engine, "make_plan", with_phantom)
    summary = encode_dataset(small, tmp_path / "dst", quality=QUALITY, model=str(model_root / MODEL_ID))
    assert (summary.coded, summary.failed) == (1, 1)
    assert "gone.png: not coded" in summary.failures[0]["error"] and summary.exit_code == 1


def test_cli_encode_dataset(src: Path, model_root: Path, tmp_path: Path) -> None:
    """The command on its own local Ray instance: exit code, JSON summary, one line per failure, no Ray noise."""
    small = tmp_path / "src"
    for path in _images(src, 6) + ["broken/garbage.png"]:
        (small / path).parent.mkdir(parents=True, exist_ok=True)
        (small / path).write_bytes((src / path).read_bytes())
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}  # not this module's instance
    env["CCACODEC_MODELS"] = str(model_root)
    command = [sys.executable, "-m", "cca_codec", "encode-dataset", str(small), str(tmp_path / "dst"), "--engine", "ray"]
    result = subprocess.run(
        [*command, "--num-cpus", "2", "--workers", "1", "-q", str(QUALITY), "--model", MODEL_ID, "--json"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 3, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["total"], summary["coded"], summary["failed"]) == (7, 6, 1)
    lines = result.stderr.splitlines()
    assert lines[0].startswith("ccacodec: error: ") and "garbage.png" in lines[0]
    assert lines[1].startswith("7 files: 6 coded, 0 done before, 1 failed; ")
    assert len(lines) == 2, result.stderr


def test_without_ray_the_command_says_how_to_install_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    result = CliRunner().invoke(cli, ["encode-dataset", str(tmp_path), str(tmp_path / "dst")])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "ccacodec: error: the Ray engine needs Ray Data, which is not installed: pip install 'ccacodec[ray]'"
    )


def test_bad_settings_are_usage_errors_before_any_work(tmp_path: Path, model_root: Path) -> None:
    model_dir = str(model_root / MODEL_ID)
    runner = CliRunner()
    for extra in (["--tile", "100"], ["-q", "9"], ["--address", "auto", "--num-cpus", "2"]):
        result = runner.invoke(cli, ["encode-dataset", str(tmp_path), str(tmp_path / "dst"), "--model", model_dir, *extra])
        assert result.exit_code == 2, (extra, result.output)
    write_image(tmp_path, 16, 16, name="one.png")
    with pytest.raises(UsageError, match="3 workers of 1 CPU need more than the cluster's 2 CPUs"):
        encode_dataset(tmp_path, tmp_path / "dst", model=model_dir, ray_options=RayOptions(workers=3))
    assert not list((tmp_path / "dst").rglob("*.cca"))


def test_plan_decides_what_is_done(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "a").mkdir(parents=True)
    (dst / "a").mkdir(parents=True)
    for name in ("one.png", "two.png", "three.png"):
        (src / "a" / name).write_bytes(b"x")
        (dst / "a" / name).with_suffix(".cca").write_bytes(b"y")
    settings = {"quality": 3.0, "context": "grouped"}
    stat = (src / "a" / "one.png").stat()
    done = {"status": "ok", "output": "a/one.cca", "source_bytes": stat.st_size, "source_mtime_ns": stat.st_mtime_ns, **settings}
    previous = {
        "a/one.png": {"path": "a/one.png", **done},
        "a/two.png": {"path": "a/two.png", **done, "output": "a/two.cca", "quality": 4.0},  # other settings
        "a/three.png": {"path": "a/three.png", **done, "output": "a/three.cca", "source_bytes": 2},  # changed source
    }
    plan = make_plan(src, dst, IMAGE_SUFFIXES, ".cca", settings, previous, "SRC")
    assert [r["path"] for r in plan.done] == ["a/one.png"]
    assert sorted(s.path for s in plan.todo) == ["a/three.png", "a/two.png"]
    (dst / "a" / "one.cca").unlink()
    plan = make_plan(src, dst, IMAGE_SUFFIXES, ".cca", settings, previous, "SRC")
    assert not plan.done, "a missing output is redone"


def test_manifest_keeps_the_last_record_and_skips_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / MANIFEST_NAME
    write_manifest(path, [{"path": "b", "status": "failed"}, {"path": "a", "status": "ok"}])
    with open(path, "a") as stream:
        stream.write(json.dumps({"path": "b", "status": "ok"}) + "\n" + '{"path": "c", "sta')
    records = read_manifest(path)
    assert sorted(records) == ["a", "b"] and records["b"]["status"] == "ok"


def test_records_from_before_efforts_read_as_effort_1(tmp_path: Path) -> None:
    path = tmp_path / MANIFEST_NAME
    old = {"path": "a.png", "status": "ok", "quality": 4.0, "context": "checkerboard", "model": "m", "weights": "w"}
    path.write_text(json.dumps(old) + "\n" + json.dumps({"path": "b.png", "status": "failed", "quality": None}) + "\n")
    records = read_manifest(path)
    assert records["a.png"]["effort"] == 1 and "effort" not in records["b.png"]
    settings = {"quality": 4.0, "context": "checkerboard", "model": "m", "weights": "w"}
    assert all(records["a.png"][key] == value for key, value in {**settings, "effort": 1}.items())
