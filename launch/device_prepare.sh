#!/usr/bin/env bash
# Prepares, on a machine with package-registry access, what launch/device_check.sh carries to a GPU
# host that has none: the wheels of launch/device_wheels.txt for CPython 3.12 on x86-64 in .whl/,
# and Debian's GL/Vulkan loader packages in .gl/ (both ignored by git, sent alongside the tree).
# Then checks that the wheels' requirements are met (by each other or by the host image's packages,
# launch/gpu_image_packages.txt) and prints the size of everything that travels.
#
#   bash launch/device_prepare.sh           # idempotent: a wheel or package already there is kept
set -euo pipefail
cd "$(dirname "$0")/.." || exit 1
PY="${PYTHON:-python3}"
mkdir -p .whl .gl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
grep -v '^#' launch/device_wheels.txt | while read -r req; do
  [[ -n "$req" ]] || continue
  "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl "$req"
done
if ! compgen -G ".gl/*.deb" >/dev/null; then
  lists=$(mktemp -d)
  mkdir -p "$lists/partial"
  o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 "-oDir::State::Lists=$lists")
  apt-get "${o[@]}" update -qq
  (cd .gl && apt-get "${o[@]}" download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
  rm -rf "$lists"
fi
"$PY" -m pirl.bench.device --check_wheels .whl --installed_list launch/gpu_image_packages.txt
tree=$({ git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
whl=$(du -cb .whl/*.whl | tail -1 | cut -f1)
gl=$(du -cb .gl/*.deb | tail -1 | cut -f1)
echo "travels: tree $((tree / 1024)) KiB + .whl $((whl / 1048576)) MiB + .gl $((gl / 1024)) KiB" \
  "= $(((tree + whl + gl) / 1048576)) MiB of the 64 MiB limit"
