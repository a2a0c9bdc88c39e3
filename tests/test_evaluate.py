"""Rate-distortion evaluation on tiny generated images with a random tiny model."""
import base64
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from cca_codec.base.errors import UsageError
from cca_codec.cli import cli
from cca_codec.core.checkpoint import in_memory_model
from cca_codec.measure import classical, curves
from cca_codec.measure import evaluate as ev

QUALITIES = [2, 5]
CONTEXTS = ["grouped", "checkerboard"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def textured(height: int, width: int, seed: int) -> np.ndarray:
    """(height, width, 3) uint8: gradients, a sinusoidal pattern and noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([xx * 3.0, yy * 4.0, 128 + 90 * np.sin(xx / 5.0) * np.cos(yy / 7.0)], axis=-1)
    noise = np.random.default_rng(seed).normal(0.0, 10.0, base.shape)
    return np.clip(np.rint(base + noise), 0, 255).astype(np.uint8)


def ccacodec_eval(*args: object) -> Result:
    """``ccacodec eval ARGS`` in this process."""
    return CliRunner().invoke(cli, ["eval", *(str(a) for a in args)])


def write_png(directory: Path, name: str, height: int, width: int, seed: int = 0) -> Path:
    path = directory / name
    Image.fromarray(textured(height, width, seed)).save(path)
    return path


def two_images(tmp_path: Path) -> Path:
    """A folder with a.png (64x80) and b.png (48x48)."""
    folder = tmp_path / "images"
    folder.mkdir()
    write_png(folder, "a.png", 64, 80, seed=1)
    write_png(folder, "b.png", 48, 48, seed=2)
    return folder


@pytest.fixture(scope="module")
def model():
    return in_memory_model("cca-tiny", model_id="eval-tiny")


@pytest.fixture(scope="module")
def run(tmp_path_factory, model):
    """Two small images evaluated at two qualities in both context modes, .cca files kept."""
    root = tmp_path_factory.mktemp("eval")
    images = [write_png(root, "a.png", 64, 80, seed=1), write_png(root, "b.png", 48, 48, seed=2)]
    workdir = root / "cca"
    results = ev.evaluate(images, model, QUALITIES, CONTEXTS, device="cpu", progress=False, workdir=workdir)
    return root, workdir, results


def synthetic_anchor(path: Path, bpp: list[float], psnr: list[float], name: str = "synthetic") -> Path:
    path.write_text(json.dumps({"name": name, "results": {"bpp": bpp, "psnr-rgb": psnr}}))
    return path


def test_json_files_follow_the_results_schema(run, tmp_path):
    _, _, results = run
    paths = ev.write_results(results, tmp_path / "out")
    assert [p.name for p in paths] == [f"ccacodec-eval-tiny-{ctx}.json" for ctx in CONTEXTS]
    for ctx, path in zip(CONTEXTS, paths):
        data = json.loads(path.read_text())
        assert data["name"] == f"ccacodec-eval-tiny-{ctx}"
        assert isinstance(data["description"], str) and data["description"]
        r = data["results"]
        assert set(r) == set(ev.RESULT_KEYS)
        assert all(len(r[key]) == len(QUALITIES) for key in ev.RESULT_KEYS)
        assert r["quality"] == QUALITIES
        assert all(math.isfinite(p) for p in r["psnr-rgb"])
        assert all(b > 0 for b in r["bpp"])
        assert all(b >= pb > 0 for b, pb in zip(r["bpp"], r["bpp-payload"]))
        assert all(t > 0 for t in r["encoding_time"] + r["decoding_time"])
        assert set(data["per_image"]) == {"a.png", "b.png"}
        for record in data["per_image"].values():
            assert all(len(record[key]) == len(QUALITIES) for key in ev.RESULT_KEYS[1:])
        per_bpp = [rec["bpp"] for rec in data["per_image"].values()]
        per_psnr = [rec["psnr-rgb"] for rec in data["per_image"].values()]
        assert r["bpp"] == pytest.approx(np.mean(per_bpp, axis=0).tolist())
        assert r["psnr-rgb"] == pytest.approx(np.mean(per_psnr, axis=0).tolist())


def test_rate_is_the_size_of_the_kept_cca_file(run):
    _, workdir, results = run
    record = results["checkerboard"]["per_image"]["a.png"]
    files = sorted(workdir.glob("*-a-checkerboard-*.cca"))
    assert [f.stat().st_size for f in files] == record["file_bytes"]
    assert record["bpp"] == pytest.approx([8 * n / (64 * 80) for n in record["file_bytes"]])


def test_ms_ssim_is_none_for_small_images(run):
    _, _, results = run
    for result in results.values():
        assert result["results"]["ms-ssim-rgb"] == [None] * len(QUALITIES)
        for record in result["per_image"].values():
            assert record["ms-ssim-rgb"] == [None] * len(QUALITIES)


def test_ms_ssim_average_skips_undefined_images(tmp_path, model):
    big = write_png(tmp_path, "big.png", 168, 176, seed=3)
    small = write_png(tmp_path, "small.png", 48, 48, seed=4)
    result = ev.evaluate([big, small], model, [3], ["grouped"], progress=False)["grouped"]
    value = result["per_image"]["big.png"]["ms-ssim-rgb"][0]
    assert result["per_image"]["small.png"]["ms-ssim-rgb"] == [None]
    assert 0.0 < value <= 1.0
    assert result["results"]["ms-ssim-rgb"] == [pytest.approx(value)]


def test_ssimulacra2_is_finite_for_normal_images(run):
    _, _, results = run
    for result in results.values():
        records = list(result["per_image"].values())
        for record in records:
            assert all(math.isfinite(v) and v < 100.0 for v in record["ssimulacra2"])
        assert result["results"]["ssimulacra2"] == pytest.approx(np.mean([r["ssimulacra2"] for r in records], axis=0).tolist())


def test_bd_table_against_synthetic_anchors(run, tmp_path):
    _, _, results = run
    ours = results["grouped"]["results"]
    overlapping = synthetic_anchor(
        tmp_path / "overlap.json",
        [b * 2 for b in ours["bpp"]] + [ours["bpp"][-1] * 4],
        [ours["psnr-rgb"][0] - 1, ours["psnr-rgb"][1] + 1, ours["psnr-rgb"][1] + 2],
    )
    rows = curves.bd_table(results, [overlapping])
    assert [(r["context"], r["anchor"]) for r in rows] == [(ctx, "synthetic") for ctx in CONTEXTS]
    # two qualities are too few points for a Bjontegaard fit: recorded, not raised
    assert rows[0]["bd_rate"] is None and "at least 3" in rows[0]["note"]

    # a four-point curve of ours: exactly half the anchor's rate, and one out of range
    four = {"c": {"name": "ours", "results": {"bpp": [0.1, 0.2, 0.4, 0.8], "psnr-rgb": [28.0, 30.0, 32.5, 35.0]}}}
    half = synthetic_anchor(tmp_path / "half.json", [0.2, 0.4, 0.8, 1.6], [28.0, 30.0, 32.5, 35.0], "double")
    far = synthetic_anchor(tmp_path / "far.json", [0.2, 0.4, 0.8, 1.6], [48.0, 50.0, 52.5, 55.0], "far")
    rows = curves.bd_table(four, [half, far])
    assert rows[0]["bd_rate"] == pytest.approx(-50.0, abs=1e-6) and rows[0]["note"] is None
    assert rows[0]["bd_psnr"] > 0
    assert rows[1]["bd_rate"] is None and "do not overlap in PSNR" in rows[1]["note"]
    table = curves.markdown_bd_table(rows)
    assert "-50.00" in table and "n/a" in table


def test_plot_is_a_png(run, tmp_path):
    _, _, results = run
    anchor = synthetic_anchor(tmp_path / "a.json", [0.1, 0.5, 1.0, 3.0], [25.0, 30.0, 34.0, 40.0])
    out = tmp_path / "plots" / "rd.png"
    curves.plot_rd(results, [anchor], out)
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 100 and img.height > 100


def test_bad_arguments_are_usage_errors(model, tmp_path):
    image = write_png(tmp_path, "x.png", 32, 32)
    with pytest.raises(UsageError, match="quality must be between"):
        ev.evaluate([image], model, [0.5], ["grouped"], progress=False)
    with pytest.raises(UsageError, match="unknown context"):
        ev.evaluate([image], model, [1], ["raster"], progress=False)
    with pytest.raises(UsageError, match="no images"):
        ev.evaluate([], model, [1], ["grouped"], progress=False)


def test_command_line(models_env, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name, seed in (("b.png", 1), ("a.png", 2), ("c.jpg", 3)):
        write_png(folder, name, 40, 56, seed)
    (folder / "notes.txt").write_text("not an image")
    anchor = synthetic_anchor(tmp_path / "anchor.json", [0.1, 0.5, 1.0, 3.0], [25.0, 30.0, 34.0, 40.0])
    out = tmp_path / "out"
    result = ccacodec_eval(
        folder, "--model", "test-tiny", "--qualities", "1,3", "--context", "grouped",
        "--limit", "2", "--out", out, "--anchor", anchor, "--plot", tmp_path / "rd.png", "--no-progress",
    )
    assert result.exit_code == 0, result.output
    stdout = result.stdout
    assert result.stderr.splitlines()[-1] == f"wrote {tmp_path / 'rd.png'}"
    assert "| context | quality | bpp |" in stdout and "| grouped | 3 |" in stdout
    assert "| ccacodec-test-tiny-grouped | synthetic |" in stdout
    data = json.loads((out / "ccacodec-test-tiny-grouped.json").read_text())
    assert sorted(data["per_image"]) == ["a.png", "b.png"]
    assert (tmp_path / "rd.png").read_bytes()[:8] == PNG_SIGNATURE


def test_command_line_reports_errors(tmp_path):
    result = ccacodec_eval(tmp_path / "missing", "--out", tmp_path / "out")
    assert result.exit_code == UsageError.exit_code
    assert result.stderr == f"error: {tmp_path / 'missing'} is not a directory\n"
    result = ccacodec_eval(tmp_path, "--out", tmp_path / "out", "--limit", "0")
    assert result.exit_code == UsageError.exit_code and "--limit must be at least 1" in result.stderr


def test_anchor_takes_several_files_at_once(models_env, tmp_path):
    """``--anchor A B`` as the argparse tool took it (``nargs="+"``), and ``--anchor A --anchor B``."""
    from cca_codec.cli.tools import spread_values

    assert spread_values(["D", "--anchor", "a", "b", "--plot", "p", "c"], ["--anchor"]) == [
        "D", "--anchor", "a", "--anchor", "b", "--plot", "p", "c"
    ]
    assert spread_values(["--anchor", "a", "--", "b"], ["--anchor"]) == ["--anchor", "a", "--", "b"]
    folder = two_images(tmp_path)
    anchors = [
        synthetic_anchor(tmp_path / f"{name}.json", [0.1, 0.5, 1.0, 3.0], [25.0 + k, 30.0 + k, 34.0 + k, 40.0 + k])
        for k, name in enumerate(["first", "second", "third"])
    ]
    result = ccacodec_eval(
        folder, "--model", "test-tiny", "--qualities", "1,3", "--context", "grouped", "--out", tmp_path / "out",
        "--anchor", anchors[0], anchors[1], "--anchor", anchors[2], "--no-progress",
    )
    assert result.exit_code == 0, result.output
    bd = json.loads((tmp_path / "out" / curves.BD_FILE).read_text())
    assert [Path(row["anchor_file"]).name for row in bd["rows"]] == ["first.json", "second.json", "third.json"]


def test_compare_writes_a_curve_per_codec(models_env, tmp_path):
    folder = two_images(tmp_path)
    out = tmp_path / "out"
    result = ccacodec_eval(
        folder, "--model", "test-tiny", "--qualities", "1,3,5", "--context", "grouped",
        "--compare", "jpeg,webp", "--out", out, "--plot", tmp_path / "rd.png", "--no-progress",
    )
    assert result.exit_code == 0, result.output
    stdout = result.stdout
    assert "| codec | quality | bpp |" in stdout and "| jpeg | 50 |" in stdout
    ours = json.loads((out / "ccacodec-test-tiny-grouped.json").read_text())
    for key, name in (("jpeg", "jpeg-444-pillow"), ("webp", "webp-pillow")):
        data = json.loads((out / f"{name}.json").read_text())
        assert data["name"] == name and "Pillow" in data["description"]
        r = data["results"]
        assert set(r) == set(ev.CLASSICAL_KEYS)
        assert r["quality"] == list(classical.CODECS[key].qualities)
        assert all(len(r[k]) == len(r["quality"]) for k in ev.CLASSICAL_KEYS)
        assert all(b > 0 for b in r["bpp"]) and all(math.isfinite(p) for p in r["psnr-rgb"])
        assert sorted(data["per_image"]) == ["a.png", "b.png"]
        record = data["per_image"]["a.png"]
        assert record["bpp"] == pytest.approx([8 * n / (64 * 80) for n in record["file_bytes"]])
        assert r["psnr-rgb"][-1] > r["psnr-rgb"][0]  # the sweep goes from low to high quality
        assert all(math.isfinite(v) for v in r["ssimulacra2"]) and r["ssimulacra2"][-1] > r["ssimulacra2"][0]
    bd = json.loads((out / curves.BD_FILE).read_text())
    assert [(row["curve"], row["anchor"], row["anchor_file"]) for row in bd["rows"]] == [
        (ours["name"], "jpeg-444-pillow", None), (ours["name"], "webp-pillow", None)
    ]
    assert "| ccacodec-test-tiny-grouped | jpeg-444-pillow |" in stdout
    assert (tmp_path / "rd.png").read_bytes()[:8] == PNG_SIGNATURE


def test_html_report_is_one_page_with_plot_tables_and_strip(models_env, tmp_path):
    folder = two_images(tmp_path)
    page = tmp_path / "report.html"
    result = ccacodec_eval(
        folder, "--model", "test-tiny", "--qualities", "1,3,5", "--context", "grouped,checkerboard",
        "--compare", "jpeg", "--out", tmp_path / "out", "--html", page, "--no-progress",
    )
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<svg" in text and "<?xml" not in text
    assert "ccacodec-test-tiny-grouped" in text and "jpeg-444-pillow" in text and "BD-rate" in text
    pictures = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]+)"', text)
    assert [alt for _, alt in pictures] == [
        "original", "ccacodec-test-tiny-grouped", "ccacodec-test-tiny-checkerboard", "jpeg-444-pillow"
    ]
    sizes = {Image.open(io.BytesIO(base64.b64decode(data))).size for data, _ in pictures}
    assert sizes == {(64, 64)}  # 1:1 crops of a.png (its short side)
    assert "quality 3:" in text  # ours at the middle quality
    assert not re.search(r'(src|href)="(https?:)?//', text)  # nothing from the network


def test_compare_reports_a_missing_tool_and_runs_the_others(models_env, tmp_path, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    write_png(folder, "a.png", 40, 56, seed=1)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no avifenc, cjxl, heif-enc on this PATH
    out = tmp_path / "out"
    result = ccacodec_eval(
        folder, "--model", "test-tiny", "--qualities", "1", "--context", "grouped",
        "--compare", "jpeg420,avif,jxl", "--out", out, "--no-progress",
    )
    assert result.exit_code == 0, result.output
    err = result.stderr
    lines = [line for line in err.splitlines() if "skipped" in line]
    assert len(lines) == 2
    assert "avif skipped: avifenc and avifdec not found on PATH" in lines[0] and "make codecs" in lines[0]
    assert "jxl skipped: cjxl and djxl not found on PATH" in lines[1]
    assert (out / "jpeg-420-pillow.json").is_file()
    assert not list(out.glob("avif*")) and not list(out.glob("jxl*"))


def test_compare_rejects_unknown_codecs(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    write_png(folder, "a.png", 32, 32)
    result = ccacodec_eval(folder, "--compare", "jpeg,bpg", "--out", tmp_path / "out")
    assert result.exit_code == UsageError.exit_code
    assert result.stderr.startswith("error: ") and "unknown codec bpg" in result.stderr


def test_a_failing_codec_is_dropped(tmp_path):
    class Broken(classical.PillowCodec):
        def encode(self, source, quality, out):
            raise classical.ToolFailure("broken on purpose")

    jpeg = classical.CODECS["jpeg"]
    broken = Broken(
        key="broken", name="broken-codec", pil_format="JPEG", feature="jpg", suffix=".jpg", options=lambda q: {},
        setting="quality", qualities=(1, 2, 3), bench_quality=2, span=(1, 3), integer=True,
    )
    image = write_png(tmp_path, "a.png", 32, 32)
    messages: list[str] = []
    results = ev.evaluate_classical([image], [broken, jpeg], progress=False, say=messages.append)
    assert list(results) == ["jpeg"]
    assert messages == ["broken dropped: a.png, quality 1: broken on purpose"]
