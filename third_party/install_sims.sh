#!/usr/bin/env bash
# Installs the three simulators (MetaWorld, LIBERO, ManiSkill3) and their system libraries on
# Debian 12 as root, non-interactively. Safe to run again: each step checks before acting.
#
#   bash third_party/install_sims.sh            # everything
#   PIRL_SIMS="metaworld libero" bash ...        # a subset
#
# Why each piece is done by hand:
# - torch: LIBERO's benchmark module imports torch. Installing torch==2.13.0 FIRST pins the CPU
#   build; anything later that asks for "torch" is then satisfied and no CUDA wheels are pulled.
# - LIBERO: hf-libero declares heavy extras it never uses to run envs (robomimic, transformers,
#   wandb, ...). It is installed with --no-deps plus its real runtime needs, and a config.yaml is
#   written so that importing it never calls input(). Its scene assets are downloaded from the
#   Hugging Face Hub when it is reachable (else one line says what to do), and robosuite gets the
#   private macros file without which every import warns.
# - ManiSkill3 on CPU needs a Vulkan driver; Debian 12's lavapipe (Mesa 22.3) cannot create a
#   device, Mesa 25 from bookworm-backports can.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
PY=${PYTHON:-python3}
SIMS=${PIRL_SIMS:-"metaworld libero maniskill"}
HERE="$(cd "$(dirname "$0")" && pwd)"
pipi() { "$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore "$@"; }
has_py() { "$PY" -c "import $1" >/dev/null 2>&1; }
want() { [[ " $SIMS " == *" $1 "* ]]; }

# --- system libraries -------------------------------------------------------------------------
APT_UPDATED=0
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if ((${#missing[@]})); then
    if ((APT_UPDATED == 0)); then apt-get update -qq; APT_UPDATED=1; fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}
# MuJoCo (MetaWorld, LIBERO) renders through EGL or OSMesa. pirl writes videos with PyAV (requirements.txt);
# imageio-ffmpeg serves the simulators' own video tools.
apt_install libosmesa6 libosmesa6-dev libegl1 libgl1 libglfw3 libvulkan1

if want maniskill; then
  if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" \
      >/etc/apt/sources.list.d/pirl-bookworm-backports.list
    APT_UPDATED=0
  fi
  # lavapipe (Mesa's CPU Vulkan driver) >= 25 from backports; its libdrm must come along.
  ver=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)
  if [[ -z "$ver" || "$ver" != 25.* ]]; then
    apt-get update -qq; APT_UPDATED=1
    pkgs=$(apt-cache depends -t bookworm-backports mesa-vulkan-drivers 2>/dev/null \
      | awk '/Depends: libdrm/ {print $2}' | sort -u | tr '\n' ' ')
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends -t bookworm-backports \
      mesa-vulkan-drivers libdrm2 libdrm-common $pkgs >/dev/null
  fi
fi

# --- Python packages --------------------------------------------------------------------------
pipi "imageio>=2.36" "imageio-ffmpeg>=0.5" "gymnasium>=1.0"
if want libero || want maniskill; then
  "$PY" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null \
    || pipi torch==2.13.0
fi
if want metaworld; then
  has_py metaworld || pipi metaworld==3.1.1
fi
if want libero; then
  pipi robosuite==1.4.0 bddl==1.0.1 easydict termcolor h5py pyyaml matplotlib cloudpickle future \
    opencv-python-headless hydra-core einops "mujoco==3.3.0"
  has_py libero || pipi --no-deps hf-libero==0.1.4
  # A config file so `import libero.libero` never prompts; see write_libero_config.py.
  [[ -f "$HERE/write_libero_config.py" ]] && "$PY" "$HERE/write_libero_config.py"
  # robosuite warns "No private macro file found!" at every import until macros_private.py exists
  # (its scripts/setup_macros.py copies macros.py there); find_spec does not import it.
  rs_dir=$("$PY" -c "import importlib.util as u, os; print(os.path.dirname(u.find_spec('robosuite').origin))")
  [[ -f "$rs_dir/macros_private.py" ]] || cp "$rs_dir/macros.py" "$rs_dir/macros_private.py"
  [[ -f "$HERE/download_libero_assets.py" ]] && "$PY" "$HERE/download_libero_assets.py"
fi
if want maniskill; then
  has_py mani_skill || pipi mani-skill==3.0.1 sapien==3.0.3 mplib==0.1.1 pytorch_kinematics==0.7.6
fi
echo "install_sims: done ($SIMS)"
