#!/usr/bin/env bash
# Starts a training job: on this machine, on every worker of a Cloud TPU VM slice, or as a
# SLURM job with one process per GPU.
#
#   ./launch.sh local [--dry-run] --config FILE[:ARG] --workdir DIR [--config.field=value ...]
#   ./launch.sh tpu [--dry-run] --name NAME --zone ZONE [--project P] [--accelerator v4-32
#       [--version RUNTIME]] --config FILE[:ARG] --workdir gs://BUCKET/DIR [--config...]
#   ./launch.sh slurm [--dry-run] [--nodes N] [--gpus-per-node G] [--partition P]
#       [--account A] [--time HH:MM:SS] --config FILE[:ARG] --workdir DIR [--config...]
#
# tpu: copies this repository to every worker of the slice NAME, installs it (a Python
# 3.11 venv and `pip install -e '.[tpu]'`), then starts the same command on all workers at
# once; their output streams here. With --accelerator it first creates the slice when it
# does not exist. Every worker runs `python -m resnet_jax.main`, which starts JAX's
# distributed runtime itself (it detects the TPU VM); the workdir must be a bucket that
# all workers can reach.
# slurm: submits a batch script (printed first) whose `srun` starts one process per GPU;
# JAX detects SLURM and gives each process its GPU. SLURM sends SIGTERM two minutes
# before the time limit, so the job saves a checkpoint; submit again to continue.
#
# --dry-run prints every command (and the batch script) without running anything.
# Bad arguments stop with this usage and exit status 2 before anything runs.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python3}

USAGE="usage:
  ./launch.sh local [--dry-run] --config FILE[:ARG] --workdir DIR [--config.field=value ...]
  ./launch.sh tpu [--dry-run] --name NAME --zone ZONE [--project P] [--accelerator v4-32
      [--version RUNTIME]] --config FILE[:ARG] --workdir gs://BUCKET/DIR [--config...]
  ./launch.sh slurm [--dry-run] [--nodes N] [--gpus-per-node G] [--partition P]
      [--account A] [--time HH:MM:SS] --config FILE[:ARG] --workdir DIR [--config...]"

usage() {
  if [[ $# -gt 0 ]]; then echo "launch.sh: $*" >&2; fi
  echo "$USAGE" >&2
  exit 2
}

# Quotes an argument for a POSIX shell, leaving plain words as they are (as shlex.quote);
# in --option=value only the value is quoted, to keep printed commands readable.
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./~-]+$ ]]; then
    printf '%s' "$1"
  elif [[ $1 =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    quote "${BASH_REMATCH[2]}"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# The words of a command, quoted, on one line.
join_quoted() {
  local out='' word
  for word in "$@"; do out+="${out:+ }$(quote "$word")"; done
  printf '%s' "$out"
}

# Runs a command, or prints it under --dry-run.
run() {
  if (( dry_run )); then join_quoted "$@"; echo; else "$@"; fi
}

# ---------------------------------------------------------------- arguments
[[ $# -ge 1 ]] || usage 'no target given (local, tpu or slurm)'
target=$1
shift
case $target in
  local|tpu|slurm) ;;
  -h|--help) usage ;;
  *) usage "unknown target '$target' (available: local, tpu, slurm)" ;;
esac

dry_run=0 config='' workdir='' name='' zone='' project='' accelerator='' version=''
nodes=1 gpus_per_node=8 partition='' account='' time_limit=''
overrides=()  # --config.field=value, passed on unchanged
job_flags=()  # main.py's own multi-process flags (local only)

# Which options each target takes, so that a misplaced one is an error, not ignored.
allowed() {
  case $target:$1 in
    *:--config|*:--workdir|*:--dry-run) return 0 ;;
    tpu:--name|tpu:--zone|tpu:--project|tpu:--accelerator|tpu:--version) return 0 ;;
    slurm:--nodes|slurm:--gpus-per-node|slurm:--partition|slurm:--account|slurm:--time) return 0 ;;
    local:--coordinator_address|local:--num_processes|local:--process_id) return 0 ;;
  esac
  return 1
}

while [[ $# -gt 0 ]]; do
  arg=$1
  shift
  case $arg in
    --config.*) overrides+=("$arg"); continue ;;
    --dry-run) dry_run=1; continue ;;
    --*=*) option=${arg%%=*} value=${arg#*=} ;;
    --*)
      option=$arg
      [[ $# -gt 0 && $1 != --* ]] || usage "$option needs a value"
      value=$1
      shift
      ;;
    *) usage "unexpected argument '$arg'" ;;
  esac
  allowed "$option" || usage "unknown option '$option' for target '$target'"
  [[ -n $value ]] || usage "$option needs a value"
  case $option in
    --config) config=$value ;;
    --workdir) workdir=$value ;;
    --name) name=$value ;;
    --zone) zone=$value ;;
    --project) project=$value ;;
    --accelerator) accelerator=$value ;;
    --version) version=$value ;;
    --nodes) nodes=$value ;;
    --gpus-per-node) gpus_per_node=$value ;;
    --partition) partition=$value ;;
    --account) account=$value ;;
    --time) time_limit=$value ;;
    *) job_flags+=("$option=$value") ;;
  esac
done

[[ -n $config ]] || usage '--config is required'
[[ -n $workdir ]] || usage '--workdir is required'

# The config file, relative to the repository: the copy on the workers has the same layout.
config_file=${config%%:*}
[[ -f $config_file ]] || usage "config file '$config_file' does not exist"
config_dir=$(cd "$(dirname "$config_file")" && pwd)
case $config_dir/ in
  "$REPO"/*) config_rel=${config_dir#"$REPO"}/$(basename "$config_file") ;;
  *) config_rel='' ;;
esac
config_rel=${config_rel#/}
if [[ $config == *:* ]]; then config_rel+=":${config#*:}"; fi

# ---------------------------------------------------------------- local
launch_local() {
  run "$PYTHON" -m resnet_jax.main --config "$config" --workdir "$workdir" \
    ${job_flags[@]+"${job_flags[@]}"} ${overrides[@]+"${overrides[@]}"}
}

# ---------------------------------------------------------------- tpu
# The TPU VM runtime image that suits an accelerator type.
runtime_version() {
  case $1 in
    v2-*|v3-*|v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
  esac
}

check_tpu_args() {
  [[ -n $name ]] || usage 'tpu needs --name (the TPU VM slice)'
  [[ -n $zone ]] || usage 'tpu needs --zone'
  [[ $workdir == gs://?* ]] ||
    usage "tpu needs a gs:// workdir that every worker can reach (got '$workdir')"
  [[ -n $config_rel ]] ||
    usage "the config file must be inside $REPO (it is copied to the workers)"
  if [[ -n $accelerator ]]; then
    [[ $accelerator =~ ^v[0-9][a-z]*-[0-9]+$ ]] ||
      usage "--accelerator '$accelerator' is not a TPU type such as v4-32"
    [[ -n $version ]] || version=$(runtime_version "$accelerator")
    [[ -n $version ]] || usage "give --version: no default runtime for '$accelerator'"
  elif [[ -n $version ]]; then
    usage '--version only applies with --accelerator (to create the slice)'
  fi
}

launch_tpu() {
  check_tpu_args
  local where=(--zone="$zone") tpu=(gcloud compute tpus tpu-vm)
  [[ -z $project ]] || where+=(--project="$project")
  local archive=${TMPDIR:-/tmp}/resnet_jax_$name.tar.gz
  # TPU images ship Python 3.10; uv provides the 3.11+ that the project needs.
  local install='set -e; rm -rf resnet_jax; mkdir resnet_jax; tar -xzf resnet_jax.tar.gz -C resnet_jax'
  install+='; python3 -m pip install --user --quiet --upgrade uv'
  install+='; python3 -m uv venv --allow-existing --python 3.11 resnet_jax_venv'
  install+='; cd resnet_jax && python3 -m uv pip install --quiet --python ../resnet_jax_venv/bin/python -e ".[tpu]"'
  local job
  job="cd resnet_jax && ../resnet_jax_venv/bin/python -m resnet_jax.main $(join_quoted \
    --config "$config_rel" --workdir "$workdir" ${overrides[@]+"${overrides[@]}"})"

  if [[ -n $accelerator ]]; then
    if (( dry_run )); then
      echo "# only if the slice does not exist yet (when this describe fails):"
      run "${tpu[@]}" describe "$name" "${where[@]}"
    fi
    if (( dry_run )) || ! "${tpu[@]}" describe "$name" "${where[@]}" >/dev/null 2>&1; then
      run "${tpu[@]}" create "$name" "${where[@]}" --accelerator-type="$accelerator" \
        --version="$version"
    fi
  fi
  run tar -czf "$archive" --exclude=.git --exclude=.venv --exclude=workdirs \
    --exclude=__pycache__ --exclude=.pytest_cache --exclude=.ruff_cache \
    --exclude='*.egg-info' -C "$REPO" .
  run "${tpu[@]}" scp "$archive" "$name":resnet_jax.tar.gz --worker=all "${where[@]}"
  run "${tpu[@]}" ssh "$name" --worker=all "${where[@]}" --command="$install"
  run "${tpu[@]}" ssh "$name" --worker=all "${where[@]}" --command="$job"
}

# ---------------------------------------------------------------- slurm
check_slurm_args() {
  [[ $nodes =~ ^[1-9][0-9]*$ ]] || usage "--nodes '$nodes' must be a positive integer"
  [[ $gpus_per_node =~ ^[1-9][0-9]*$ ]] ||
    usage "--gpus-per-node '$gpus_per_node' must be a positive integer"
}

slurm_script() {
  echo '#!/bin/bash'
  echo '#SBATCH --job-name=resnet_jax'
  echo "#SBATCH --nodes=$nodes"
  echo "#SBATCH --ntasks-per-node=$gpus_per_node"
  echo "#SBATCH --gpus-per-node=$gpus_per_node"
  echo '#SBATCH --signal=TERM@120'
  [[ -z $partition ]] || echo "#SBATCH --partition=$partition"
  [[ -z $account ]] || echo "#SBATCH --account=$account"
  [[ -z $time_limit ]] || echo "#SBATCH --time=$time_limit"
  echo "# Runs in the submit directory with its environment (the venv that has resnet_jax);"
  echo "# one process per GPU: JAX reads the srun step's variables to form one job."
  echo "srun --kill-on-bad-exit=1 $(join_quoted "$PYTHON" -m resnet_jax.main \
    --config "$config" --workdir "$workdir" ${overrides[@]+"${overrides[@]}"})"
}

launch_slurm() {
  check_slurm_args
  local script
  script=$(slurm_script)
  if (( dry_run )); then
    echo "sbatch <<'EOF'"
    echo "$script"
    echo 'EOF'
  else
    echo "$script"
    sbatch <<<"$script"
  fi
}

"launch_$target"
