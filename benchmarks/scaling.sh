#!/usr/bin/env bash
# Weak scaling of the DDPM CIFAR-10 UNet (128 images per GPU) and DiT-XL/2 (256 latents per GPU) on one host of
# 4 GPUs: 1, 2 and 4 GPUs, data parallel and FSDP, train step only. Runs that fit side by side on disjoint GPUs run
# at once (CUDA_VISIBLE_DEVICES) to save time; each is its own process.
#
#     benchmarks/scaling.sh /tmp/scaling        # then: python benchmarks/bench_suite.py --summarize /tmp/scaling
set -u
OUT=${1:?usage: benchmarks/scaling.sh OUT}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"

suite() {  # GPUS CASE DEVICES [--fsdp]
    CUDA_VISIBLE_DEVICES=$1 "$PYTHON" benchmarks/bench_suite.py --train_only --out "$OUT" --cases "$2" \
        --devices "$3" "${@:4}" > "$OUT/log_$2_$3${4:+_fsdp}.txt" 2>&1
}

suite 0 ddpm_b128 1 & suite 1,2 ddpm_b128 2 & suite 3 dit_xl_2 1 & wait
suite 0,1 dit_xl_2 2 & suite 2,3 dit_xl_2 2 --fsdp & wait
suite 0,1,2,3 ddpm_b128 4
suite 0,1,2,3 dit_xl_2 4
suite 0,1,2,3 dit_xl_2 4 --fsdp
suite 0,1 ddpm_b128 2 --fsdp
suite 0,1,2,3 ddpm_b128 4 --fsdp
"$PYTHON" benchmarks/bench_suite.py --summarize "$OUT"
