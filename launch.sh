#!/usr/bin/env bash
# Starts a training job.
#
#   ./launch.sh local --config FILE[:ARG] --workdir DIR [--config.field=value ...]
#
# `local` runs on this machine, on all its devices. Multi-host targets (Cloud TPU pods,
# GPU clusters) are not implemented yet; they will take the same arguments.
set -euo pipefail

usage() {
  echo "usage: $0 local --config FILE[:ARG] --workdir DIR [--config.field=value ...]" >&2
  exit 2
}

[[ $# -ge 1 ]] || usage
target=$1
shift
case "$target" in
  local)
    [[ " $* " == *" --config"* && " $* " == *" --workdir"* ]] || usage
    exec "${PYTHON:-python3}" -m resnet_jax.main "$@"
    ;;
  *)
    echo "unknown target '$target' (available: local)" >&2
    usage
    ;;
esac
