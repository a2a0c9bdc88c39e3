"""ccacodec bench on the tiny test model, and the stage timer of the codec paths."""
import json

import pytest
from click.testing import CliRunner, Result

from cca_codec.base.errors import UsageError
from cca_codec.cli import cli
from cca_codec.base.timing import NO_TIMER, StageTimer, entropy_step
from cca_codec.core.checkpoint import in_memory_model
from cca_codec.core.codec import decode_image, encode_image
from cca_codec.image.io import IMAGE_SUFFIXES, load_image
from cca_codec.measure import classical

ENCODE_CODEC_STAGES = ["g_a", "hyperprior"]
DECODE_CODEC_STAGES = ["container read", "hyperprior"]


def steps(count: int) -> set[str]:
    return {entropy_step(k) for k in range(1, count + 1)}


def ccacodec_bench(*args: object) -> Result:
    """``ccacodec bench ARGS`` in this process."""
    return CliRunner().invoke(cli, ["bench", *(str(a) for a in args)])


@pytest.mark.parametrize("context, count", [("grouped", 5), ("checkerboard", 10)])
def test_codec_reports_every_stage_and_codes_the_same_bytes(make_image, context, count):
    model = in_memory_model("cca-tiny", model_id="bench-tiny")
    image = load_image(make_image(48, 80))
    enc, dec = StageTimer(), StageTimer()
    data = encode_image(image, model, quality=3, context=context, device="cpu", timer=enc)
    assert data == encode_image(image, model, quality=3, context=context, device="cpu")
    assert set(enc.seconds) == {"g_a", "hyperprior", "range coding", "container write"} | steps(count)
    decoded = decode_image(data, model, device="cpu", timer=dec)
    assert (decoded.rgb == decode_image(data, model, device="cpu").rgb).all()
    assert set(dec.seconds) == {"container read", "hyperprior", "range coding", "g_s"} | steps(count)
    assert all(s >= 0 for s in [*enc.seconds.values(), *dec.seconds.values()])


def test_no_timer_records_nothing():
    with NO_TIMER.stage("g_a"):
        pass
    assert NO_TIMER.wrap("range coding", len)([1, 2]) == 2
    assert NO_TIMER.seconds == {}


def test_stage_timer_accumulates_and_syncs():
    calls = []
    timer = StageTimer(sync=lambda: calls.append(1))
    for _ in range(3):
        timer.wrap("range coding", lambda: None)()
    assert list(timer.seconds) == ["range coding"] and len(calls) == 6


def test_bench_command_writes_every_stage(models_env, make_image, tmp_path):
    image = make_image(64, 96)
    out = tmp_path / "bench.json"
    result = ccacodec_bench(
        image, "--model", "test-tiny", "--context", "checkerboard", "--device", "cpu", "--threads", "1,2",
        "--repeat", "1", "--compare", "jpeg,webp", "--json", out,
    )
    assert result.exit_code == 0, result.output
    stdout = result.stdout
    assert result.stderr.splitlines()[-1] == f"wrote {out}"
    report = json.loads(out.read_text())
    assert report["width"] == 96 and report["height"] == 64 and report["model"] == "test-tiny"
    assert report["model_load_s"] > 0 and report["repeat"] == 1
    assert [r["label"] for r in report["runs"]] == ["cpu, 1 thread", "cpu, 2 threads"]
    for run in report["runs"]:
        assert set(run["encode"]["stages"]) == {"image read", "g_a", "hyperprior", "range coding", "container write"} | steps(10)
        assert set(run["decode"]["stages"]) == {"container read", "hyperprior", "range coding", "g_s", "image write"} | steps(10)
        for direction in ("encode", "decode"):
            d = run[direction]
            assert d["total_s"] >= sum(d["stages"].values()) > 0
            assert d["megapixels_per_s"] == pytest.approx(96 * 64 / 1e6 / d["total_s"])
        assert run["peak_rss_mib"] > 0 and run["cuda_peak_mib"] is None
        assert run["bpp"] > 0 and run["psnr_rgb"] > 0
    assert [c["key"] for c in report["classical"]] == ["jpeg", "webp"]
    for c in report["classical"]:
        assert c["encode_s"] > 0 and c["decode_s"] > 0 and c["bpp"] > 0
        assert set(c["slower"]) == {"cpu, 1 thread", "cpu, 2 threads"}
    assert "| encode stage (ms) | cpu, 1 thread | cpu, 2 threads |" in stdout
    assert "| entropy parameters 10 |" in stdout and "| g_s |" in stdout
    assert "| jpeg (Pillow" in stdout
    # what the figures depend on: the CPU, its instruction sets, the limits the process set, the precision
    env = report["environment"]
    assert env["torch_capability"] and isinstance(env["native_bf16"], bool) and isinstance(env["flags"], list)
    assert f"CPU: {env['cpu']} (" in stdout and ("native bf16" in stdout)
    assert all(run["precision"] in ("bf16", "fp32-fast", "fp32") for run in report["runs"])


def test_bench_skips_missing_tools(models_env, make_image, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = ccacodec_bench(
        make_image(64, 64), "--model", "test-tiny", "--device", "cpu", "--threads", "1", "--repeat", "1", "--compare", "cwebp,jpeg"
    )
    assert result.exit_code == 0, result.output
    assert "ccacodec bench: cwebp skipped: cwebp and dwebp not found on PATH" in result.stderr
    assert "| jpeg (Pillow" in result.stdout and "| cwebp" not in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--threads", "0"], "at least 1"),
    (["--repeat", "0"], "--repeat must be at least 1"),
    (["--compare", "png"], "unknown codec png"),
])
def test_bench_usage_errors(models_env, make_image, args, message):
    result = ccacodec_bench(make_image(64, 64), "--model", "test-tiny", "--device", "cpu", *args)
    assert result.exit_code == UsageError.exit_code
    assert result.stdout == "" and result.stderr.splitlines()[-1].startswith("ccacodec bench: error: ") and message in result.stderr


def test_classical_registry_is_consistent():
    for key, codec in classical.CODECS.items():
        assert codec.key == key and codec.qualities and codec.name


def test_ccacodec_bench_subcommand_passes_its_arguments(make_image):
    result = ccacodec_bench(make_image(64, 64), "--threads", "two")
    assert result.exit_code == UsageError.exit_code
    assert result.output.strip().splitlines() == ["ccacodec bench: error: --threads must be comma-separated integers, got 'two'"]


def test_bench_help_is_the_module_description():
    result = ccacodec_bench("--help")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0].endswith(" bench [OPTIONS] [IMAGE ...]")
    assert "Speed benchmark: per-stage timing of encode and decode" in result.stdout
    assert "--compare CODECS" in result.stdout and "--repeat N" in result.stdout


def test_a_bad_option_value_is_a_usage_error(make_image):
    result = ccacodec_bench(make_image(64, 64), "--repeat", "many")
    assert result.exit_code == UsageError.exit_code and "--repeat" in result.stderr


def test_bench_times_a_folder_image_by_image(models_env, make_image, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, (h, w) in {"a.png": (64, 64), "b.png": (64, 128)}.items():
        make_image(h, w).rename(folder / name)
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "bench.json"
    result = ccacodec_bench(folder, "--model", "test-tiny", "--device", "cpu", "--threads", "1", "--repeat", "1", "--compare", "jpeg", "--json", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["image"] == str(folder) and [p.rsplit("/", 1)[-1] for p in report["images"]] == ["a.png", "b.png"]
    assert report["width"] is None and report["megapixels"] == pytest.approx((64 * 64 + 64 * 128) / 2 / 1e6)
    run = report["runs"][0]
    assert run["encode"]["total_s"] >= max(run["encode"]["stages"].values()) > 0 and run["bpp"] > 0
    assert report["classical"][0]["bpp"] > 0
    assert "then over the 2 images" in result.stdout


def test_bench_refuses_a_folder_without_images(models_env, tmp_path):
    result = ccacodec_bench(tmp_path, "--model", "test-tiny", "--device", "cpu", "--threads", "1")
    assert result.exit_code == UsageError.exit_code
    assert f"no images ({' '.join(sorted(IMAGE_SUFFIXES))}) in {tmp_path}" in result.stderr
    assert ".png" in IMAGE_SUFFIXES and ".gif" in IMAGE_SUFFIXES


def test_cpu_features_name_the_limits_the_process_set(monkeypatch):
    from cca_codec.core.device import CPU_FLAGS, cpu_features, describe_cpu

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    held = cpu_features()
    assert held["onednn_isa_limit"] == "AVX2" and set(held["flags"]) <= set(CPU_FLAGS)
    assert "oneDNN held to AVX2" in describe_cpu(held)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    free = cpu_features()
    assert free["onednn_isa_limit"] is None and "oneDNN unrestricted" in describe_cpu(free)
    assert describe_cpu(free).startswith(free["cpu"])
