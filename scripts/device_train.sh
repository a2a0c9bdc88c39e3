#!/usr/bin/env bash
# One training chunk on the lent GPU machine (the `device` tool's `run`), end to end.
#
# Prepare here, once per session (in the repository root):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl compressai==1.2.8 constriction==0.5.0 pytorch-msssim==1.0.0 safetensors
#   python -m cca_codec.data ../shared/data/train data_pack      # the training pack (~35 MiB)
#
# Then, with the device tool (carry: .whl, data_pack, runs/<name> when resuming):
#   run: bash scripts/device_train.sh start runs/gpu1 --max-minutes 24 [--init models/cca-compact | --resume runs/gpu1/state.pt]
#   run: bash scripts/device_train.sh wait runs/gpu1 520        (repeat; each call holds the machine ~9 min)
#   run: bash scripts/device_train.sh finish runs/gpu1          (exports weights into $OUT)
# Calls must follow each other within 30 s or the machine (and the background run) is gone.
# Back here: join split weights (`cat weights.safetensors.part* > weights.safetensors`), copy the
# export into models/cca-compact, evaluate on Kodak. The full state (~160 MB) cannot travel (64 MiB
# carry limit, 16 MiB per returned file), so a later session continues with --init models/cca-compact
# (weights only; Adam restarts, so use a short --warmup).
set -euo pipefail
cmd=${1:?start|wait|finish}; run=${2:?run directory}; shift 2

install_wheels() {
    if [ -d .whl ] && [ ! -d /tmp/site ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    fi
    export PYTHONPATH=/tmp/site:$PWD
}

case "$cmd" in
start)
    install_wheels
    mkdir -p "$run"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
    setsid nohup python3 -m cca_codec.train --data data_pack --out "$run" --device cuda \
        --batch 16 --crop 256 --bf16 --export "$run/export" --export-id cca-compact "$@" \
        >"$run/train.out" 2>&1 </dev/null &
    sleep 90; tail -n 5 "$run/train.out"
    ;;
wait)
    secs=${1:-520}
    end=$((SECONDS + secs))
    while [ $SECONDS -lt $end ] && pgrep -f "cca_codec.train" >/dev/null; do sleep 10; done
    tail -n 5 "$run/train.out"
    ;;
finish)
    install_wheels
    pkill -TERM -f "cca_codec.train" || true
    while pgrep -f "cca_codec.train" >/dev/null; do sleep 2; done
    tail -n 3 "$run/train.out"
    out=${OUT:-$run/out}; mkdir -p "$out"
    cp "$run/log.jsonl" "$out/" 2>/dev/null || true
    if [ -d "$run/export" ]; then
        cp "$run/export/"* "$out/"
        # the device tool brings back files of at most 16 MiB: split bigger ones into 15 MiB parts
        # (join here with `cat F.part* > F`; model.json's sha256 checks the result on load)
        for f in "$out"/*; do
            if [ "$(stat -c %s "$f")" -gt $((16 * 1024 * 1024)) ]; then
                split -b 15M -d "$f" "$f.part" && rm "$f"
            fi
        done
        # check the export before it leaves the machine: one Kodak-size image through the codec
        python3 -m cca_codec encode samples/seeding.png -o "$run/check.cca" --model "$run/export" --device cuda
        python3 -m cca_codec decode "$run/check.cca" -o /tmp/check.png --model "$run/export" --device cpu
        python3 -m cca_codec.metrics samples/seeding.png /tmp/check.png --cca "$run/check.cca"
        cp "$run/check.cca" "$out/"
    fi
    # the resumable state is large; bring it back only when it fits (16 MiB per file)
    if [ "$(stat -c %s "$run/state.pt")" -le $((16 * 1024 * 1024)) ]; then cp "$run/state.pt" "$out/"; fi
    ls -la "$out"
    ;;
*) echo "usage: $0 start|wait|finish RUN [args]" >&2; exit 2 ;;
esac
