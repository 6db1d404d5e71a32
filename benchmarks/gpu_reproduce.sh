#!/usr/bin/env bash
# On one GPU: Table 6's nets on the paper's full schedule (64k iterations), several at once
# (`python -m resnet_jax.paper.reproduce cifar10 --parallel N`, in-memory input, no TensorFlow),
# beside the PyTorch reference ResNet-20 on the same schedule and files, with the GPU's
# utilisation sampled throughout. Writes under OUTPUT: results.md, figure6.png, each run's
# config/metrics/final eval/log, the PyTorch run's, and gpu_utilisation.csv.
#
#   OUTPUT=results/gpu DATA_DIR=path/to/cifar10-jpeg benchmarks/gpu_reproduce.sh
#
# MODELS: the study's nets (default resnet20,resnet32,resnet44,resnet56,resnet110), all at
# once unless PARALLEL says fewer. BUDGET (seconds, default 480): then every run is sent
# SIGTERM, saves its step, and results.md says how far each got; the same command with the
# same WORKDIR resumes them. DATA_DIR may instead come as data/cifar10-jpeg.tar.gz. WHEELS=DIR
# installs packages this machine lacks (ml_collections) from wheels in DIR first.
# SMALL=1 shrinks every run to a few steps on synthetic data, to check the script on a CPU.
set -uo pipefail
out=${OUTPUT:-results/gpu}
work=${WORKDIR:-/tmp/resnet_jax_runs/gpu_reproduce}
models=${MODELS:-resnet20,resnet32,resnet44,resnet56,resnet110}
budget=${BUDGET:-480}
mkdir -p "$out" "$work"
if [[ -n "${WHEELS:-}" ]]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/resnet_jax_site "$WHEELS"/*.whl \
    && export PYTHONPATH=/tmp/resnet_jax_site${PYTHONPATH:+:$PYTHONPATH} || exit 1
fi
if [[ "${SMALL:-0}" == 1 ]]; then
  data=(--config.dataset=synthetic --config.num_classes=10 --config.image_size=8
        --config.synthetic.num_train_examples=128 --config.synthetic.num_eval_examples=32)
  shrink=(--config.total_steps=6 --config.log_every_steps=3 --config.eval_every_steps=3
          --config.checkpoint_every_steps=3 --config.batch_size=16 --config.eval_batch_size=16)
else
  if [[ -z "${DATA_DIR:-}" ]]; then
    mkdir -p /tmp/resnet_jax_data
    tar -xzf data/cifar10-jpeg.tar.gz -C /tmp/resnet_jax_data || exit 1
    DATA_DIR=/tmp/resnet_jax_data/cifar10-jpeg
  fi
  data=(--config.data_dir="$DATA_DIR")
  shrink=()
fi
parallel=${PARALLEL:-$(tr ',' '\n' <<< "$models" | grep -c .)}

(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2> /dev/null || true) | tee "$out/device.txt"
python3 -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__,
  "optax", optax.__version__, jax.devices())' | tee -a "$out/device.txt"
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 \
    > "$out/gpu_utilisation.csv" 2>&1 &
  sampler=$!
fi

echo "== PyTorch reference ResNet-20, the paper's schedule, in the background =="
if python3 -c 'import torch' 2> /dev/null; then
  rm -rf "$work/torch_resnet20"  # it does not resume: each attempt starts afresh
  timeout -s TERM -k 60 "$budget" python3 benchmarks/torch_cifar10.py \
    --config experiments/cifar10.py:resnet20 --workdir "$work/torch_resnet20" \
    "${data[@]}" "${shrink[@]}" > "$out/torch_resnet20.log" 2>&1 &
  torch_run=$!
else
  echo "torch is not installed: no PyTorch reference run" | tee "$out/torch_resnet20.log"
fi

# Each JAX run preallocates 0.9/PARALLEL of the GPU's memory; the last tenth holds torch's.
echo "== Table 6: $models, $parallel at once, for at most $budget s =="
start=$(date +%s)
timeout --preserve-status -s TERM -k 120 "$budget" python3 -m resnet_jax.paper.reproduce cifar10 --workdir "$work/table6" \
  --models "$models" --parallel "$parallel" "${data[@]}" "${shrink[@]}" 2>&1 \
  | grep -v '^W' > "$out/reproduce.log"
status=${PIPESTATUS[0]}
grep '^reproduce:' "$out/reproduce.log"
echo "reproduce: exit $status after $(( $(date +%s) - start )) s" | tee -a "$out/reproduce.log"
[[ -n "${torch_run:-}" ]] && { wait "$torch_run"; echo "torch reference: exit $?" | tee -a "$out/torch_resnet20.log"; }
[[ -n "${sampler:-}" ]] && kill "$sampler"

cp "$work/table6/results.md" "$work/table6/figure6.png" "$out/" 2> /dev/null
for run in "$work"/table6/*_seed* "$work/torch_resnet20"; do
  [[ -d "$run" ]] || continue
  mkdir -p "$out/$(basename "$run")"
  for file in config.json metrics.jsonl final_eval.json reproduce.json train.log; do
    [[ -f "$run/$file" ]] && cp "$run/$file" "$out/$(basename "$run")/"
  done
done
cat "$out/results.md" 2> /dev/null
exit "$status"
