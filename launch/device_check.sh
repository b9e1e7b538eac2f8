#!/usr/bin/env bash
# pirl's measurement run on a GPU host, as one command (launch/README.md, "device_check.sh"):
#   1. unpacks the GL/Vulkan loader packages carried in .gl/ (EGL for MuJoCo) and, where the system
#      has no NVIDIA vendor files of its own, points glvnd and the Vulkan loader at the driver's;
#   2. installs the wheels carried in .whl/ (what the host's image lacks) into a private target
#      and puts it on PYTHONPATH;
#   3. runs `python -m pirl.bench.device` with this script's arguments; everything is logged to
#      $OUT/device_log.txt, the report lands in $OUT/device_report.{json,md}.
# With --dry_run (CPU, tiny sizes) step 1 unpacks into a temporary folder instead of /, and step 2
# installs the wheels for CPython 3.12 into a temporary target that is then removed (this machine's
# own packages run the measurement): the wheel set must install together and its requirements must
# be met by the wheels or the image's packages (launch/gpu_image_packages.txt).
#
#   bash launch/device_check.sh                   # on the GPU host
#   bash launch/device_check.sh --dry_run         # anywhere (tests/test_bench_device.py)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
export PIRL_DEVICE_T0="${PIRL_DEVICE_T0:-$(date +%s.%N)}"
OUT="${OUT:-$PWD/device_out}"
export OUT
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
dry=0
for a in "$@"; do [[ "$a" == --dry_run ]] && dry=1; done
exec > >(tee -a "$OUT/device_log.txt") 2>&1
log() { echo "device_check: $*"; }
shopt -s nullglob

# 1. GL and Vulkan loaders.
debs=(.gl/*.deb)
if ((${#debs[@]})); then
  root=/
  ((dry)) && root=$(mktemp -d)
  for f in "${debs[@]}"; do dpkg -x "$f" "$root" || log "could not unpack $f"; done
  ((dry)) || ldconfig
  log "unpacked ${#debs[@]} loader packages into $root"
  ((dry)) && rm -rf "$root"
fi
nv=/usr/local/nvidia/share
if ! compgen -G "/usr/share/glvnd/egl_vendor.d/*nvidia*" >/dev/null \
  && ! compgen -G "/etc/glvnd/egl_vendor.d/*nvidia*" >/dev/null \
  && [[ -f $nv/glvnd/egl_vendor.d/10_nvidia.json ]]; then
  export __EGL_VENDOR_LIBRARY_FILENAMES=$nv/glvnd/egl_vendor.d/10_nvidia.json
  log "EGL vendor: $__EGL_VENDOR_LIBRARY_FILENAMES"
fi
if ! compgen -G "/usr/share/vulkan/icd.d/*nvidia*" >/dev/null \
  && ! compgen -G "/etc/vulkan/icd.d/*nvidia*" >/dev/null \
  && [[ -f $nv/vulkan/icd.d/nvidia_icd.json ]]; then
  export VK_DRIVER_FILES=$nv/vulkan/icd.d/nvidia_icd.json
  log "Vulkan driver: $VK_DRIVER_FILES"
fi

# 2. Wheels.
wheels=(.whl/*.whl)
pipi=("$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-index --no-deps
  --no-compile --no-cache-dir --upgrade)
if ((${#wheels[@]} == 0)); then
  log "no wheels in .whl/: sections needing what the image lacks report it as missing"
elif ((dry)); then
  target=$(mktemp -d)
  "${pipi[@]}" --target "$target" --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    "${wheels[@]}" || { log "the wheel set does not install for CPython 3.12"; exit 1; }
  log "the ${#wheels[@]} wheels install together for CPython 3.12 ($(du -sm "$target" | cut -f1) MiB)"
  rm -rf "$target"
  "$PY" -m pirl.bench.device --check_wheels .whl --installed_list launch/gpu_image_packages.txt || exit 1
else
  site="${PIRL_SITE:-/tmp/pirl_site}"
  "${pipi[@]}" --target "$site" "${wheels[@]}" || { log "installing the wheels failed"; exit 1; }
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  log "installed ${#wheels[@]} wheels into $site ($(($(date +%s) - ${PIRL_DEVICE_T0%.*})) s since start)"
  "$PY" -m pirl.bench.device --check_wheels .whl || log "some requirements are missing (above)"
fi

# 3. The measurement.
"$PY" -m pirl.bench.device --out "$OUT" "$@"
