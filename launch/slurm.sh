#!/usr/bin/env bash
# pirl.train on several SLURM nodes, one process per node, joined by jax.distributed.
#
#   launch/slurm.sh --nodes=4 --gpus_per_node=8 --partition=gpu --time=12:00:00 -- \
#       --config=configs/libero_ppo.py:suite=spatial --workdir=/shared/runs/libero_spatial
#
# From a login node it checks the config for nodes × GPUs and submits itself with sbatch; inside
# the allocation (SLURM_JOB_ID set) it checks again and starts one task per node with srun, each
# told the coordinator (the first node), the process count and its own rank (SLURM_PROCID).
# The workdir must be on storage every node sees (checkpoints are written jointly).
#
# Options (before --; everything after -- goes to pirl.train and to the check):
#   --nodes=N            nodes (default 2; inside an allocation: SLURM_NNODES)
#   --gpus_per_node=G    GPUs per node (default 8; inside: SLURM_GPUS_ON_NODE when set)
#   --partition=P        sbatch --partition
#   --time=T             sbatch --time
#   --port=P             coordinator port (default 20000 + job id mod 20000)
#   --sbatch_args="..."  more sbatch options, split on spaces
#   --dry_run            print the commands, run nothing (also DRY_RUN=1)
# Every command is printed before it runs. PYTHON picks the interpreter (default python3).
set -euo pipefail

nodes=""
gpus=""
partition=""
time_limit=""
port=""
sbatch_args=""
dry_run="${DRY_RUN:-0}"
python="${PYTHON:-python3}"
forwarded=()

usage() {
  sed -n '2,/^set -e/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes=*) nodes="${1#*=}" ;;
    --gpus_per_node=*) gpus="${1#*=}" ;;
    --partition=*) partition="${1#*=}" ;;
    --time=*) time_limit="${1#*=}" ;;
    --port=*) port="${1#*=}" ;;
    --sbatch_args=*) sbatch_args="${1#*=}" ;;
    --dry_run) dry_run=1 ;;
    -h | --help) usage 0 ;;
    --) shift; break ;;
    *) echo "slurm.sh: unknown option $1 (pirl.train arguments go after --)" >&2; usage 2 ;;
  esac
  # Options that must reach the copy of this script that runs inside the allocation.
  case "$1" in --gpus_per_node=* | --port=*) forwarded+=("$1") ;; esac
  shift
done
args=("$@")

show() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
}

run() {
  show "$@"
  if [[ "$dry_run" != 1 ]]; then
    "$@"
  fi
}

if [[ -z "${SLURM_JOB_ID:-}" ]]; then
  # Login node: check, then submit this script as the batch job.
  nodes="${nodes:-2}"
  gpus="${gpus:-8}"
  run "$python" -m pirl.launch check --num_hosts="$nodes" --devices_per_host="$gpus" "${args[@]}"
  submit=(sbatch --job-name=pirl --nodes="$nodes" --ntasks-per-node=1 --gpus-per-node="$gpus")
  [[ -n "$partition" ]] && submit+=(--partition="$partition")
  [[ -n "$time_limit" ]] && submit+=(--time="$time_limit")
  if [[ -n "$sbatch_args" ]]; then
    read -r -a extra <<<"$sbatch_args"
    submit+=("${extra[@]}")
  fi
  run "${submit[@]}" "$0" "${forwarded[@]}" -- "${args[@]}"
  exit 0
fi

# Inside the allocation (this runs on the first node).
nodes="${SLURM_NNODES:-${nodes:-1}}"
gpus="${gpus:-${SLURM_GPUS_ON_NODE:-8}}"
port="${port:-$((20000 + SLURM_JOB_ID % 20000))}"
hostnames="$(scontrol show hostnames "${SLURM_JOB_NODELIST:?SLURM_JOB_NODELIST is not set}")"
head_node="${hostnames%%$'\n'*}"
coordinator="$head_node:$port"

run "$python" -m pirl.launch check --num_hosts="$nodes" --devices_per_host="$gpus" "${args[@]}"
# srun starts the same command on every node; each task adds its own rank, which only exists
# inside the task (SLURM_PROCID), hence the small bash -c.
# shellcheck disable=SC2016  # $SLURM_PROCID must expand in the task, not here
per_task='exec "$@" --process_id="$SLURM_PROCID"'
run srun --nodes="$nodes" --ntasks="$nodes" --ntasks-per-node=1 --kill-on-bad-exit=1 \
  bash -c "$per_task" pirl-task \
  "$python" -m pirl.train --coordinator_address="$coordinator" --num_processes="$nodes" "${args[@]}"
