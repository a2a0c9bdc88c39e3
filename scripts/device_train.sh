#!/usr/bin/env bash
# One training chunk on a lent GPU machine (the `device` tool's `run`), in ONE call: install the carried
# wheels, train for MINUTES (the trainer's recipe, bf16 + channels_last, with batch 16 x 256x256, lr 2e-4 and
# EMA 0.999 unless flags say otherwise), export the
# EMA weights, check the export through the real codec (encode on the GPU, decode on the CPU), time the encoder
# efforts on the GPU (effort_gpu.json), and put the weights, the log and the check file under $OUT (files over
# 16 MiB split into 15 MiB parts).
#
#   bash scripts/device_train.sh RUN MINUTES [trainer flags ...]
#
# Prepare here, once per session (in the repository root):
#   echo /.whl/ >> .git/info/exclude; echo /data_pack/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl compressai==1.2.8 constriction==0.5.0 pytorch-msssim==1.0.0 safetensors
#   cp -r ~/.cache/ccacodec/train/pack data_pack       # the training pack (~35 MiB; `ccacodec train-bg start` builds it)
# Then one device call, e.g. (timeout_s 600, carry [".whl", "data_pack"]):
#   bash scripts/device_train.sh runs/gpu1 7
# Back here: join split files (`cat weights.safetensors.part* > weights.safetensors`), copy model.json,
# weights.safetensors and MODEL_CARD.md into a model directory, and continue on the CPU from it:
#   ccacodec train-bg start --restart --init DIR      (the CPU run's old state is archived beside it)
# The full state (~170 MB) does not fit the 64 MiB that comes back, so Adam restarts on the CPU.
#
# Environment: PYTHON (python3), DEVICE (cuda), DATA (data_pack), INIT (models/cca-compact; "none" = random
# weights), OUT (where returned files go; default RUN/out). With DEVICE=cpu the same script is a dry run
# (tests/test_device_script.py runs it so).
set -euo pipefail
run=${1:?usage: $0 RUN MINUTES [trainer flags]}; minutes=${2:?usage: $0 RUN MINUTES [trainer flags]}; shift 2
py=${PYTHON:-python3}; device=${DEVICE:-cuda}; data=${DATA:-data_pack}; init=${INIT:-models/cca-compact}
out=${OUT:-$run/out}
mkdir -p "$run" "$out"

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
fi
[ "$device" = cuda ] && { nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true; }

init_flags=(--init "$init"); [ "$init" = none ] && init_flags=()
export PYTHONUNBUFFERED=1
"$py" -m cca_codec.training.train --data "$data" --out "$run" --device "$device" "${init_flags[@]}" \
    --batch 16 --lr 2e-4 --ema 0.999 \
    --max-minutes "$minutes" --log-every 50 --save-minutes 2 --export "$run/export" --export-id cca-compact "$@" \
    2>&1 | tee "$run/train.out" | grep -v -i warn || true
[ -f "$run/export/model.json" ] || { echo "no export in $run/export: training failed" >&2; tail -n 20 "$run/train.out" >&2; exit 1; }

# check the export before it leaves the machine: the sample through the codec, encoded here, decoded on the CPU
"$py" -m cca_codec encode samples/seeding.png -o "$run/check.cca" --model "$run/export" --device "$device" --quiet
"$py" -m cca_codec decode "$run/check.cca" -o "$run/check.png" --model "$run/export" --device cpu --quiet
"$py" -m cca_codec.image.metrics samples/seeding.png "$run/check.png" --cca "$run/check.cca"

if [ "$device" = cuda ]; then
    # encoder effort on the GPU (issue 25): the sample at qualities 2/4/6/8, efforts 1, 5 and 9, with the shipped
    # weights; seconds per encode and BD-rate against effort 1 (a few seconds on an H200)
    "$py" benchmarks/effort.py samples --limit 1 --efforts 1,5,9 --device cuda --json "$out/effort_gpu.json" || true
fi
cp "$run/export/"* "$run/log.jsonl" "$run/check.cca" "$out/"
# the device tool brings back files of at most 16 MiB: split bigger ones (model.json's sha256 checks the join)
for f in "$out"/*; do
    if [ "$(stat -c %s "$f")" -gt $((16 * 1024 * 1024)) ]; then split -b 15M -d "$f" "$f.part" && rm "$f"; fi
done
ls -la "$out"
