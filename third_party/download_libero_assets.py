"""Downloads LIBERO's scene/object assets where LIBERO itself keeps them, if they are not found yet.

    python third_party/download_libero_assets.py [--dir DIR]

Looks for the assets as pirl does (pirl.envs.libero.find_assets: $PIRL_LIBERO_ASSETS, the LIBERO
package's own folder, ~/.cache/libero/assets); if none is found, downloads the Hugging Face dataset
lerobot/libero-assets into DIR (default ~/.cache/libero/assets, hf-libero's download folder, which
pirl and LIBERO both search). Where the Hub cannot be reached it prints one line saying what to do
and exits 0: the simulators still install, and the tests that need the assets skip.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pirl.envs import libero  # after the path tweak; imports nothing from LIBERO

# Seconds to wait for the Hub to answer before calling it unreachable (a blocked network may
# drop packets instead of refusing them).
REACH_TIMEOUT_S = 15.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=os.path.expanduser(libero.ASSETS_CACHE))
    args = ap.parse_args(argv)
    try:
        print(f"LIBERO assets: found at {libero.find_assets()}")
        return 0
    except FileNotFoundError:
        pass
    import huggingface_hub

    try:
        huggingface_hub.HfApi().repo_info(libero.ASSETS_REPO, repo_type="dataset", timeout=REACH_TIMEOUT_S)
    except Exception as e:  # DNS, refused, timeout, proxy: every way of not reaching it
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(
            f"LIBERO assets: not downloaded, the Hugging Face Hub is not reachable ({reason}); on a connected "
            f"machine run `hf download {libero.ASSETS_REPO} --repo-type dataset --local-dir DIR` and copy DIR "
            f"here as {args.dir} or set {libero.ASSETS_ENV}=DIR"
        )
        return 0
    huggingface_hub.snapshot_download(libero.ASSETS_REPO, repo_type="dataset", local_dir=args.dir)
    if not libero.has_assets(args.dir):
        raise SystemExit(f"error: {libero.ASSETS_REPO} downloaded to {args.dir} has no 'scenes' folder")
    print(f"LIBERO assets: downloaded to {args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
