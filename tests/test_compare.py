"""`ccacodec compare`: size matching, the regions shown, the report folder and the command."""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_image
from PIL import Image

from cca_codec.base.errors import InputError, UsageError
from cca_codec.cli import cli
from cca_codec.core.checkpoint import in_memory_model
from cca_codec.core.ratecontrol import Target
from cca_codec.image.difference import differing_regions
from cca_codec.measure import classical
from cca_codec.measure import compare as cmp
from cca_codec.measure.report import ZOOM

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------ match_size


def counting(size_of):
    """A size function that records the settings it was asked for."""
    asked: list[float] = []

    def size_at(setting: float) -> int:
        asked.append(setting)
        return size_of(setting)

    return size_at, asked


@pytest.mark.parametrize("target", [137, 1000, 2333, 4999])
def test_integer_settings_find_the_closest_size(target):
    size_at, asked = counting(lambda q: int(50 * q))  # 50 bytes per quality step, 50 .. 5000
    setting, note = cmp.match_size(size_at, (1, 100), True, target)
    best = min(range(1, 101), key=lambda q: abs(50 * q - target))
    assert abs(50 * setting - target) == abs(50 * best - target) and note is None
    assert len(set(asked)) <= 10 and all(float(q).is_integer() for q in asked)


def test_a_span_that_runs_downwards_is_searched_the_same_way():
    # A quantizer: 63 is the smallest file, 0 the largest.
    size_at, _ = counting(lambda q: int(10_000 * 2 ** (-q / 8)))
    setting, note = cmp.match_size(size_at, (63, 0), True, 1500)
    assert note is None and abs(int(10_000 * 2 ** (-setting / 8)) / 1500 - 1) < 0.05
    assert min(range(64), key=lambda q: abs(int(10_000 * 2 ** (-q / 8)) - 1500)) == setting


def test_continuous_settings_stop_within_the_stop_tolerance():
    size_at, asked = counting(lambda d: int(40_000 / (d + 0.2)))  # a distance: smaller is larger
    setting, note = cmp.match_size(size_at, (25, 0.05), False, 12_345)
    assert note is None and abs(40_000 / (setting + 0.2) / 12_345 - 1) <= cmp.STOP_TOLERANCE + 1e-4
    assert len(asked) <= cmp.MAX_PROBES


def test_targets_beyond_the_range_take_its_end_with_a_note():
    size_at, asked = counting(lambda q: 1000 + 10 * q)
    setting, note = cmp.match_size(size_at, (0, 100), True, 500)
    assert setting == 0 and asked == [0] and "smallest file (setting 0) is +100.0 %" in note
    setting, note = cmp.match_size(size_at, (0, 100), True, 4000)
    assert setting == 100 and "largest file (setting 100) is -50.0 %" in note
    setting, note = cmp.match_size(size_at, (0, 100), True, 990)  # 1 % off at the end: no note
    assert setting == 0 and note is None


def test_flat_sizes_end_the_search_without_spending_every_probe():
    size_at, asked = counting(lambda q: 100 if q < 50 else 200)
    setting, _ = cmp.match_size(size_at, (0, 100), False, 160)
    assert setting >= 50 and len(asked) <= cmp.MAX_PROBES


# ------------------------------------------------------------------------ differing_regions


def test_regions_are_where_the_decodings_differ():
    reference = np.full((120, 160, 3), 128, np.uint8)
    a, b = reference.copy(), reference.copy()
    a[70:90, 110:130] = 200  # a's error, bottom right
    b[10:20, 10:20] = 180  # b's error, top left, smaller
    regions = differing_regions(reference, [a, b], 2, 40)
    (box1, spread1), (box2, spread2) = regions
    assert spread1 > spread2 > 0
    left, top, side = box1
    assert side == 40 and left <= 110 and left + side >= 130 and top <= 70 and top + side >= 90
    left, top, _ = box2
    assert left <= 10 and top <= 10
    same = differing_regions(reference, [reference, reference], 1, 40)
    assert len(same) == 1 and same[0][1] == 0.0


def test_regions_fit_small_images():
    reference = np.zeros((30, 50, 3), np.uint8)
    regions = differing_regions(reference, [reference + 5], 2, 192)
    for (left, top, side), _ in regions:
        assert side == 30 and 0 <= left <= 20 and top == 0


# ---------------------------------------------------------------------- the report folder


class _References(HTMLParser):
    """The src and href values of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.found += [value for name, value in attrs if name in ("src", "href") and value]


@pytest.fixture(scope="module")
def model():
    return in_memory_model("cca-tiny", model_id="compare-tiny")


@pytest.fixture(scope="module")
def report(tmp_path_factory, model):
    root = tmp_path_factory.mktemp("compare")
    images = [write_image(root, 200, 640, name="a.png"), write_image(root, 80, 112, name="b.png")]
    codecs = classical.resolve(["jpeg", "webp"])
    reports = cmp.compare_images(images, root / "report", model, codecs, quality=3, device="cpu")
    return root, reports


def test_the_report_holds_every_file_the_page_names(report):
    root, reports = report
    out = root / "report"
    page = (out / "index.html").read_text()
    refs = _References()
    refs.feed(page)
    assert refs.found and all(not re.match(r"[a-z]+:", ref) for ref in refs.found)  # relative: works offline
    assert all((out / ref).is_file() for ref in refs.found)
    for r in reports:
        for version in r.codecs:
            assert version.file in refs.found and version.decoded in refs.found
    assert not [p for p in root.iterdir() if p.name.startswith(".report")]  # nothing left of the build


def test_each_codec_is_matched_to_our_size_and_measured(report, model):
    root, reports = report
    a = reports[0]
    assert [v.name for v in a.codecs] == ["ccacodec", "jpeg", "webp"] and a.failures == []
    ours = a.codecs[0]
    assert ours.setting == "quality 3" and ours.size_error == 0
    with Image.open(root / "a.png") as img:
        original = np.asarray(img.convert("RGB"))
    for version in a.codecs:
        file = root / "report" / version.file
        assert file.stat().st_size == version.bytes
        assert version.bpp == pytest.approx(8 * version.bytes / (640 * 200))
        with Image.open(root / "report" / version.decoded) as img:
            decoded = np.asarray(img)
        mse = np.mean((decoded.astype(float) - original) ** 2)
        assert version.psnr == pytest.approx(10 * np.log10(255**2 / mse))
        assert version.encode_s > 0 and version.decode_s > 0
        assert 0 < version.ms_ssim < 1 and version.ssimulacra2 < 100
        if version.name != "ccacodec":
            assert version.size_error == pytest.approx(version.bytes / ours.bytes - 1)
            assert abs(version.size_error) <= cmp.SIZE_TOLERANCE or version.note
    assert all(v.ms_ssim is None and v.ssimulacra2 < 100 for v in reports[1].codecs)  # b: under 161 px a side
    assert a.codecs[1].setting.startswith("quality ")


def test_crops_show_every_version_at_1_1_and_zoomed(report):
    root, reports = report
    assert [len(r.regions) for r in reports] == [cmp.REGIONS, 1]  # b has room for one 80 px crop only
    for r in reports:
        for region in r.regions:
            left, top, side = region.box
            assert side == min(cmp.CROP_SIDE, r.width, r.height)
            assert list(region.crops) == ["original", "ccacodec", "jpeg", "webp"]
            with Image.open(root / "report" / r.original) as img:
                original = np.asarray(img)
            full, zoomed = region.crops["original"]
            with Image.open(root / "report" / full) as img:
                assert np.array_equal(np.asarray(img), original[top : top + side, left : left + side])
            with Image.open(root / "report" / zoomed) as img:
                assert img.size == (side // ZOOM, side // ZOOM)


def test_report_json_is_the_records(report):
    root, reports = report
    document = json.loads((root / "report" / cmp.REPORT_FILE).read_text())
    assert document["images"] == json.loads(json.dumps([r.to_dict() for r in reports]))
    record = document["images"][0]["codecs"][1]
    assert set(record) >= {"name", "setting", "bytes", "bpp", "psnr", "ms_ssim", "ssimulacra2", "encode_s", "decode_s", "file"}


def test_rate_control_sets_our_size(tmp_path, model):
    image = write_image(tmp_path, 96, 128, name="a.png")
    reports = cmp.compare_images([image], tmp_path / "r", model, [], target=Target("size", 900), device="cpu")
    ours = reports[0].codecs[0]
    assert ours.note.startswith("rate control: ")
    assert abs(ours.bytes / 900 - 1) <= 0.02 or "out of the model's range" in ours.note or "closest" in ours.note


def test_a_failing_codec_is_reported_and_the_others_run(tmp_path, model):
    class Broken(classical.PillowCodec):
        def encode(self, source, quality, out):
            raise classical.ToolFailure("broken on purpose")

    broken = Broken(
        key="broken", name="broken-codec", pil_format="JPEG", feature="jpg", suffix=".jpg", options=lambda q: {},
        setting="quality", qualities=(1, 2), bench_quality=2, span=(1, 2), integer=True,
    )
    said: list[str] = []
    reports = cmp.compare_images(
        [write_image(tmp_path, 96, 128, name="a.png")], tmp_path / "r", model, [broken, classical.CODECS["jpeg"]], quality=2, device="cpu",
        say=said.append,
    )
    assert [v.name for v in reports[0].codecs] == ["ccacodec", "jpeg"]
    assert reports[0].failures == ["broken: broken on purpose"] and said == [f"{tmp_path / 'a.png'}: broken failed: broken on purpose"]
    assert "broken on purpose" in (tmp_path / "r" / "index.html").read_text()


def test_an_unreadable_image_leaves_no_report(tmp_path, model):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(InputError):
        cmp.compare_images([write_image(tmp_path, 96, 128, name="a.png"), bad], tmp_path / "r", model, [], quality=2, device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "bad.png"]


def test_an_earlier_report_is_replaced_but_other_folders_are_not(tmp_path, model):
    image = write_image(tmp_path, 96, 128, name="a.png")
    out = tmp_path / "r"
    cmp.compare_images([image], out, model, [], quality=1, device="cpu")
    (out / "a" / "stale.txt").write_text("from the first run")
    cmp.compare_images([image], out, model, [], quality=2, device="cpu")
    assert not (out / "a" / "stale.txt").exists() and (out / "index.html").is_file()
    other = tmp_path / "photos"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not a ccacodec report"):
        cmp.compare_images([image], other, model, [], quality=1, device="cpu")
    assert [p.name for p in other.iterdir()] == ["keep.txt"]


def test_bad_requests_are_usage_errors(tmp_path, model):
    image = write_image(tmp_path, 96, 128, name="a.png")
    with pytest.raises(UsageError, match="no images"):
        cmp.compare_images([], tmp_path / "r", model, [])
    with pytest.raises(UsageError, match="matches file sizes"):
        cmp.compare_images([image], tmp_path / "r", model, [], target=Target("psnr", 30))
    with pytest.raises(UsageError):
        cmp.compare_images([image], tmp_path / "r", model, [], quality=99)


def test_images_with_the_same_stem_get_their_own_folders(tmp_path, model):
    (tmp_path / "x").mkdir()
    images = [write_image(tmp_path, 96, 128, name="a.png"), write_image(tmp_path / "x", 96, 128, name="a.png")]
    reports = cmp.compare_images(images, tmp_path / "r", model, [], quality=2, device="cpu")
    assert [r.folder for r in reports] == ["a", "a-2"]


# ------------------------------------------------------------------------------ the command


def test_command_prints_one_json_record_per_image(models_env, tmp_path):
    images = [str(write_image(tmp_path, 96, 128, name="a.png")), str(write_image(tmp_path, 96, 128, name="b.png"))]
    out = tmp_path / "report"
    result = CliRunner().invoke(
        cli, ["compare", *images, "--out", str(out), "--codecs", "jpeg", "--model", "test-tiny", "-q", "2", "--json", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["image"] for r in lines] == images
    assert [[c["name"] for c in r["codecs"]] for r in lines] == [["ccacodec", "jpeg"]] * 2
    assert (out / "index.html").is_file() and f"wrote {out / 'index.html'}" in result.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--bpp", "0.5", "-q", "2"], UsageError.exit_code, "give a quality or a target"),
        (["--bpp", "0.5", "--size", "1000"], UsageError.exit_code, "give one rate target"),
        (["--codecs", "jpeg,bpg"], UsageError.exit_code, "unknown codec bpg"),
    ],
)
def test_command_errors(models_env, tmp_path, args, code, message):
    image = write_image(tmp_path, 96, 128, name="a.png")
    result = CliRunner().invoke(cli, ["compare", str(image), "--out", str(tmp_path / "r"), "--model", "test-tiny", *args])
    assert result.exit_code == code and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_command_unreadable_input_is_exit_3(models_env, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    result = CliRunner().invoke(cli, ["compare", str(bad), "--out", str(tmp_path / "r"), "--model", "test-tiny", "--codecs", "jpeg"])
    assert result.exit_code == InputError.exit_code and "bad.png" in result.stderr
    assert not (tmp_path / "r").exists()


def test_help_names_the_default_codecs():
    result = CliRunner().invoke(cli, ["compare", "--help"])
    assert "default: " + ",".join(cmp.DEFAULT_CODECS) in " ".join(result.output.split())
