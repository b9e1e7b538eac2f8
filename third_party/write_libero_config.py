"""Writes LIBERO's config.yaml so that `import libero.libero` never prompts on stdin.

    python third_party/write_libero_config.py [--dir DIR] [--assets ASSETS_DIR]

DIR defaults to $LIBERO_CONFIG_PATH, else ~/.cache/pirl/libero (where pirl's LIBERO adapter looks).
The adapter writes the same file itself when it is missing; this script is for a fresh machine,
and for using LIBERO's own tools outside pirl (then export LIBERO_CONFIG_PATH=DIR).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pirl.envs import libero  # after the path tweak; imports nothing from LIBERO

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=os.environ.get("LIBERO_CONFIG_PATH") or libero.default_config_dir())
    ap.add_argument("--assets", default=os.environ.get(libero.ASSETS_ENV))
    args = ap.parse_args()
    print(f"LIBERO config written: {libero.write_config(args.dir, args.assets)}")
