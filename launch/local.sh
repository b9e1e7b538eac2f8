#!/usr/bin/env bash
# N pirl.train processes on this machine, joined by jax.distributed over loopback: the multi-host
# code path without a cluster (CPU with fake devices, or one process per group of local GPUs).
#
#   launch/local.sh --num_processes=2 --cpu_devices=4 -- --config=configs/quickstart.py --workdir=runs/q2
#
# Options (before --; everything after -- goes to pirl.train and to the check):
#   --num_processes=N      processes to start (default 2)
#   --cpu_devices=D        run on CPU, D fake devices per process (XLA_FLAGS)
#   --gpus_per_process=D   process i sees GPUs i·D … i·D+D−1 (CUDA_VISIBLE_DEVICES)
#   --port=P               coordinator port on 127.0.0.1 (default: a free one)
#   --module=M             python module to run (default pirl.train)
#   --dry_run              print the commands, run nothing (also DRY_RUN=1)
# Every command is printed before it runs. PYTHON picks the interpreter (default python3).
set -euo pipefail

num_processes=2
cpu_devices=""
gpus_per_process=""
port=""
module="pirl.train"
dry_run="${DRY_RUN:-0}"
python="${PYTHON:-python3}"

usage() {
  sed -n '2,/^set -e/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --num_processes=*) num_processes="${1#*=}" ;;
    --cpu_devices=*) cpu_devices="${1#*=}" ;;
    --gpus_per_process=*) gpus_per_process="${1#*=}" ;;
    --port=*) port="${1#*=}" ;;
    --module=*) module="${1#*=}" ;;
    --dry_run) dry_run=1 ;;
    -h | --help) usage 0 ;;
    --) shift; break ;;
    *) echo "local.sh: unknown option $1 (pirl.train arguments go after --)" >&2; usage 2 ;;
  esac
  shift
done
args=("$@")

if ! [[ "$num_processes" =~ ^[1-9][0-9]*$ ]]; then
  echo "local.sh: --num_processes must be a positive integer, got '$num_processes'" >&2
  exit 2
fi

show() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
}

devices_per_process=1
if [[ -n "$cpu_devices" ]]; then
  devices_per_process="$cpu_devices"
elif [[ -n "$gpus_per_process" ]]; then
  devices_per_process="$gpus_per_process"
fi

check=("$python" -m pirl.launch check --num_hosts="$num_processes" --devices_per_host="$devices_per_process" "${args[@]}")
show "${check[@]}"
if [[ "$dry_run" != 1 ]]; then
  "${check[@]}"
fi

if [[ -z "$port" ]]; then
  port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi

# Inherited XLA flags stay, but the fake device count is this launcher's to set.
xla_flags="$(printf '%s' "${XLA_FLAGS:-}" | sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g; s/  +/ /g; s/^ //; s/ $//')"

pids=()
stop_all() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  # A process blocked in a collective may not react to SIGTERM: give it 10 s, then SIGKILL.
  for _ in $(seq 10); do
    alive=0
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null && alive=1
    done
    [[ "$alive" -eq 0 ]] && return
    sleep 1
  done
  for pid in "${pids[@]}"; do
    kill -9 "$pid" 2>/dev/null || true
  done
}
trap 'stop_all; exit 130' INT TERM

for ((i = 0; i < num_processes; i++)); do
  envs=(PIRL_COORDINATOR="127.0.0.1:$port" PIRL_NUM_PROCESSES="$num_processes" PIRL_PROCESS_ID="$i")
  if [[ -n "$cpu_devices" ]]; then
    envs+=(JAX_PLATFORMS=cpu XLA_FLAGS="${xla_flags:+$xla_flags }--xla_force_host_platform_device_count=$cpu_devices")
  elif [[ -n "$gpus_per_process" ]]; then
    first=$((i * gpus_per_process))
    envs+=(CUDA_VISIBLE_DEVICES="$(seq -s, "$first" $((first + gpus_per_process - 1)))")
  fi
  cmd=(env "${envs[@]}" "$python" -m "$module" "${args[@]}")
  show "${cmd[@]}"
  if [[ "$dry_run" != 1 ]]; then
    "${cmd[@]}" &
    pids+=("$!")
  fi
done

# The first process to fail stops the others: the survivors would wait for it forever.
status=0
while [[ ${#pids[@]} -gt 0 ]]; do
  finished=""
  wait -n -p finished "${pids[@]}" || status=$?
  remaining=()
  for pid in "${pids[@]}"; do
    [[ "$pid" != "$finished" ]] && remaining+=("$pid")
  done
  pids=("${remaining[@]}")
  if [[ "$status" -ne 0 ]]; then
    echo "local.sh: a process failed (exit $status); stopping the others" >&2
    stop_all
    wait || true
    break
  fi
done
exit "$status"
