"""A file decodes the same after a change of machine (issue 38): files encoded under one CPU setting
decode, under every other, to the same symbols (each tile's symbol CRC-32 is checked by the
decoder) and, with the transforms in exact float32, to the same pixels; with fp32-fast (oneDNN's
float32) to the same pixels wherever the instruction set is the same, whatever the thread count,
and within a grey level of the exact ones everywhere. The settings stand in for
machines: the native instruction set, oneDNN and ATen held to AVX2 (a CPU without AVX-512 or
native bf16), MKL's BLAS held to AVX2, and 1 or 2 threads. The shipped model codes a crop of the
bundled sample photo at three qualities in both context modes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "seeding.png"
QUALITIES = (1, 4, 9)
MODES = ("grouped", "checkerboard")
SETTINGS = {
    "native, 2 threads": {"threads": "2"},
    "native, 1 thread": {"threads": "1"},
    "AVX2 (oneDNN, ATen), 2 threads": {"threads": "2", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
    "AVX2 (oneDNN, ATen, MKL), 1 thread": {
        "threads": "1", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    },
}

# encode IMAGE OUTDIR TAG: one file per (quality, mode), precision auto (what a user on that machine gets);
# decode FILE...: each file's pixels (sha256) with the transforms in fp32, fp32-fast and auto, what auto resolved
# to, and the largest difference between fp32-fast's and fp32's pixels (grey levels)
SCRIPT = r"""
import hashlib, json, sys, numpy, torch
from pathlib import Path
from cca_codec.core.checkpoint import load_model
from cca_codec.core.codec import decode_image, encode_image
from cca_codec.core.precision import resolve_precision
from cca_codec.image.io import load_image
torch.set_num_threads(int(sys.argv[2]))
model = load_model()
auto = resolve_precision("auto", torch.device("cpu"))
out = {"auto": auto, "capability": torch.backends.cpu.get_cpu_capability(), "files": {}}
if sys.argv[1] == "encode":
    image, folder, tag = load_image(sys.argv[3]), Path(sys.argv[4]), sys.argv[5]
    for q in json.loads(sys.argv[6]):
        for mode in ("grouped", "checkerboard"):
            path = folder / f"{tag}-q{q}-{mode}.cca"
            path.write_bytes(encode_image(image, model, quality=q, context=mode, device="cpu"))
            out["files"][str(path)] = None
else:
    for path in sys.argv[3:]:
        data = Path(path).read_bytes()
        rgb = {p: decode_image(data, model, device="cpu", precision=p).rgb for p in ("fp32", "fp32-fast", "auto")}
        out["files"][path] = {p: hashlib.sha256(v.tobytes()).hexdigest() for p, v in rgb.items()}
        out["files"][path]["fast_max_diff"] = int(numpy.abs(rgb["fp32-fast"].astype(int) - rgb["fp32"]).max())
print(json.dumps(out))
"""


def _run(setting: dict[str, str], *args: str) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": setting["threads"]}
    env.update({k: v for k, v in setting.items() if k != "threads"})
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, args[0], setting["threads"], *args[1:]],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def encoded(tmp_path_factory) -> tuple[dict[str, dict], list[str]]:
    """Every setting's report of its encoding run, and all the files made, a set per setting."""
    folder = tmp_path_factory.mktemp("cross_machine")
    crop = folder / "crop.png"
    with Image.open(SAMPLE) as img:
        img.convert("RGB").crop((256, 96, 448, 224)).save(crop)
    reports = {
        name: _run(setting, "encode", str(crop), str(folder), f"s{i}", json.dumps(QUALITIES))
        for i, (name, setting) in enumerate(SETTINGS.items())
    }
    files = [path for report in reports.values() for path in report["files"]]
    assert len(files) == len(SETTINGS) * len(QUALITIES) * len(MODES)
    return reports, files


def test_auto_precision_follows_the_instruction_set_the_setting_allows(encoded):
    reports, _ = encoded
    for name, report in reports.items():
        if "ONEDNN_MAX_CPU_ISA" in SETTINGS[name]:
            assert report["auto"] == "fp32-fast", name  # no bf16 kernels below AVX-512: oneDNN's float32
            assert report["capability"] == "AVX2", name
    native = {report["auto"] for name, report in reports.items() if "ONEDNN_MAX_CPU_ISA" not in SETTINGS[name]}
    assert len(native) == 1


def test_files_from_every_setting_decode_identically_under_every_other(encoded):
    reports, files = encoded
    decoded = {name: _run(setting, "decode", *files) for name, setting in SETTINGS.items()}
    for path in files:
        # fp32 transforms: the same pixels everywhere; decoding at all means the same symbols (CRC-32)
        fp32 = {name: report["files"][path]["fp32"] for name, report in decoded.items()}
        assert len(set(fp32.values())) == 1, (Path(path).name, fp32)
        # auto: the same pixels wherever auto chose the same precision
        by_precision: dict[str, set[str]] = {}
        for name, report in decoded.items():
            by_precision.setdefault(report["auto"], set()).add(report["files"][path]["auto"])
        assert all(len(hashes) == 1 for hashes in by_precision.values()), (Path(path).name, by_precision)
        if "fp32-fast" in by_precision:
            assert by_precision["fp32-fast"] == {report["files"][path]["fp32-fast"] for report in decoded.values()
                                                 if report["auto"] == "fp32-fast"}
        # fp32-fast: the same pixels under one instruction set at 1 or 2 threads, within a grey level of fp32's
        for isa in ("native", "AVX2"):
            fast = {report["files"][path]["fp32-fast"] for name, report in decoded.items() if name.startswith(isa)}
            assert len(fast) == 1, (Path(path).name, isa, fast)
        assert max(report["files"][path]["fast_max_diff"] for report in decoded.values()) <= 1, Path(path).name
