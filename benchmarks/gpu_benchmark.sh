#!/usr/bin/env bash
# On one GPU: training and eval speed of this project's steps on synthetic data
# (python -m resnet_jax.training.benchmark): ResNet-50 224px batch 256 in bfloat16 and float32,
# and the CIFAR ResNet-20 step at batch 128.
#
#   OUTPUT=results/gpu benchmarks/gpu_benchmark.sh
#
# COMPARE_DIR=DIR also runs the ResNet-50 bfloat16 case with the resnet_jax package found
# in DIR (another version of the code), side by side on the same card. SKIP_F32=1 skips
# the float32 ResNet-50 case. SMALL=1 shrinks every case to check the script on a CPU.
set -uo pipefail
repo=$(pwd)
mkdir -p "${OUTPUT:-results/gpu}"
out=$(cd "${OUTPUT:-results/gpu}" && pwd)
if [[ "${SMALL:-0}" == 1 ]]; then  # (a nominal peak: no matmul is timed for the MFU)
  r50=(--batch-size 2 --steps 1 --repeats 1 --warmup 0 --peak-tflops 1)
  r20=(--batch-size 8 --steps 1 --repeats 1 --warmup 0 --peak-tflops 1)
else
  r50=(--batch-size 256 --steps 10 --repeats 5)
  r20=(--batch-size 128 --steps 50 --repeats 5)
fi
(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true) | tee "$out/device.txt"

bench() {  # NAME DIR ARGS...: one benchmark, run from DIR so that its resnet_jax is used
  local name=$1 dir=$2
  shift 2
  echo "== $name =="
  (cd "$dir" && timeout "${CASE_TIMEOUT:-150}" python3 -m resnet_jax.training.benchmark "$@" \
    --json "$out/$name.json") 2>&1 | grep -v '^[IW][0-9]' | tee "$out/$name.txt"
}

bench r50_bf16 "$repo" --config "$repo/experiments/r50.py" --dtype bfloat16 "${r50[@]}"
if [[ -n "${COMPARE_DIR:-}" ]]; then
  bench r50_bf16_compare "$COMPARE_DIR" --config "$repo/experiments/r50.py" \
    --dtype bfloat16 "${r50[@]}"
fi
[[ "${SKIP_F32:-0}" == 1 ]] || \
  bench r50_f32 "$repo" --config "$repo/experiments/r50.py" --dtype float32 "${r50[@]}"
bench cifar_r20 "$repo" --config "$repo/experiments/cifar10.py:resnet20" "${r20[@]}"

# TORCH=1: the PyTorch reference of the same models on the same card (AMP bf16,
# channels-last; eager, then torch.compile for ResNet-50).
if [[ "${TORCH:-0}" == 1 ]]; then
  torch_bench() {  # NAME ARGS...
    local name=$1
    shift
    echo "== $name =="
    # The script imports resnet_jax.models (the depth table) from this checkout.
    PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" \
      timeout "${CASE_TIMEOUT:-150}" python3 benchmarks/torch_reference.py "$@" 2>&1 \
      | grep -v '^[IW][0-9]' | tee "$out/$name.txt"
  }
  t50=(--model resnet50 --variant v1 --batch-size "${r50[1]}" --steps 10 --repeats 5)
  t20=(--model cifar_resnet20 --batch-size "${r20[1]}" --steps 50 --repeats 5)
  [[ "${SMALL:-0}" == 1 ]] && t50=(--model resnet50 --batch-size 2 --steps 1 --repeats 1) \
    && t20=(--model cifar_resnet20 --batch-size 8 --steps 1 --repeats 1)
  torch_bench torch_r50_bf16 "${t50[@]}" --dtype bfloat16
  torch_bench torch_r20 "${t20[@]}"
  torch_bench torch_r50_bf16_compiled "${t50[@]}" --dtype bfloat16 --compile
fi
