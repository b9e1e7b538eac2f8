#!/usr/bin/env bash
# pirl.train on every host of a Cloud TPU pod slice, one process per host.
#
#   launch/tpu_pod.sh --tpu=my-v4-32 --zone=us-central2-b --num_hosts=4 --devices_per_host=4 -- \
#       --config=configs/libero_ppo.py:suite=spatial --workdir=gs://my-bucket/runs/libero_spatial
#
# Checks the config for hosts × chips here, then runs the same command on all workers through
# `gcloud compute tpus tpu-vm ssh --worker=all`. On a TPU pod JAX reads the coordinator, the
# process count and each host's rank from the TPU metadata (--coordinator_address=auto). The
# repository must be at --repo_dir on every worker, with pirl's requirements and jax[tpu]
# installed, and the workdir on storage all workers see (a gs:// bucket).
#
# Options (before --; everything after -- goes to pirl.train and to the check):
#   --tpu=NAME             TPU VM name (required)
#   --zone=ZONE            its zone (required)
#   --project=PROJECT      gcloud project (default: gcloud's)
#   --num_hosts=N          hosts in the slice, e.g. 4 for v4-32 (required)
#   --devices_per_host=D   chips per host (default 4)
#   --repo_dir=DIR         the repository on the workers (default: this directory's path)
#   --dry_run              print the commands, run nothing (also DRY_RUN=1)
# Every command is printed before it runs. PYTHON picks the interpreter (default python3).
set -euo pipefail

tpu=""
zone=""
project=""
num_hosts=""
devices=4
repo_dir="$(pwd)"
dry_run="${DRY_RUN:-0}"
python="${PYTHON:-python3}"

usage() {
  sed -n '2,/^set -e/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu=*) tpu="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --num_hosts=*) num_hosts="${1#*=}" ;;
    --devices_per_host=*) devices="${1#*=}" ;;
    --repo_dir=*) repo_dir="${1#*=}" ;;
    --dry_run) dry_run=1 ;;
    -h | --help) usage 0 ;;
    --) shift; break ;;
    *) echo "tpu_pod.sh: unknown option $1 (pirl.train arguments go after --)" >&2; usage 2 ;;
  esac
  shift
done
args=("$@")

for required in tpu zone num_hosts; do
  if [[ -z "${!required}" ]]; then
    echo "tpu_pod.sh: --$required is required" >&2
    usage 2
  fi
done

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

run "$python" -m pirl.launch check --num_hosts="$num_hosts" --devices_per_host="$devices" "${args[@]}"

# The remote command is one string that the workers' shell parses: quote every word of it.
remote="cd $(printf '%q' "$repo_dir") &&"
for word in "$python" -m pirl.train --coordinator_address=auto "${args[@]}"; do
  remote+=" $(printf '%q' "$word")"
done
ssh=(gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all)
[[ -n "$project" ]] && ssh+=(--project="$project")
run "${ssh[@]}" --command="$remote"
