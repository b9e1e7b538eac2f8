"""Local directories for remote checkpoint paths.

`hf://org/name[@revision]` goes through the Hugging Face hub cache (huggingface_hub); any other
fsspec URL such as `gs://openpi-assets/checkpoints/pi05_libero` is copied once into
$PIRL_CACHE/checkpoints (gs:// needs the optional `gcsfs` package).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import tempfile

from pirl.checkpoints import validation
from pirl.models import tokenizer


def _hf_snapshot(url: str) -> pathlib.Path:
    # Late: the hub client (and its HTTP stack) is needed only for hf:// paths.
    import huggingface_hub
    from huggingface_hub import errors as hf_errors

    repo, _, revision = url.removeprefix("hf://").partition("@")
    try:
        return pathlib.Path(huggingface_hub.snapshot_download(repo, revision=revision or None))
    except (hf_errors.HfHubHTTPError, hf_errors.HFValidationError, OSError) as e:
        rev = f" --revision {revision}" if revision else ""
        raise validation.CheckpointError(
            f"cannot get {url} ({type(e).__name__}; offline?): on a machine with internet run "
            f"`hf download {repo}{rev} --local-dir DIR`, copy DIR here and pass its path instead"
        ) from None


# Object stores whose client retries for minutes when the host cannot be resolved: check first.
_STORE_HOSTS = {"gs": "storage.googleapis.com", "gcs": "storage.googleapis.com"}


def _check_reachable(url: str, scheme: str) -> None:
    host = _STORE_HOSTS.get(scheme)
    if host is None:
        return
    try:
        socket.getaddrinfo(host, 443)
    except OSError as e:
        raise validation.CheckpointError(
            f"cannot reach {host} for {url} ({e}; offline?): copy the directory locally and pass its path"
        ) from None


def _fsspec_copy(url: str) -> pathlib.Path:
    """Copies a remote directory once into the cache (a marker file says the copy finished)."""
    # Late: fsspec and its backends (gcsfs, optional) are needed only for remote URLs.
    import fsspec

    scheme, _, rest = url.partition("://")
    dest = tokenizer.default_cache_dir() / "checkpoints" / scheme / rest.strip("/")
    if (dest / ".complete").is_file():
        return dest
    _check_reachable(url, scheme)
    try:
        # openpi's bucket is public: anonymous access needs no credentials.
        fs, root = fsspec.core.url_to_fs(url, **({"token": "anon"} if scheme in ("gs", "gcs") else {}))
        files = fs.find(root)
        if not files:
            raise FileNotFoundError(f"nothing under {url}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Copy next to the destination, then rename: an interrupted copy never looks complete.
        tmp = pathlib.Path(tempfile.mkdtemp(dir=dest.parent))
        for remote in files:
            local = tmp / remote[len(root.rstrip("/")) + 1 :]
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(remote, str(local))
    except ImportError as e:
        raise validation.CheckpointError(
            f"reading {url} needs an fsspec backend ({e}); install it (gs://: `pip install gcsfs`) or copy "
            f"the directory locally and pass its path"
        ) from None
    except OSError as e:
        raise validation.CheckpointError(
            f"cannot copy {url} ({type(e).__name__}: {e}); offline? copy it locally and pass its path"
        ) from None
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    (dest / ".complete").touch()
    return dest


def resolve_path(path: str | os.PathLike) -> pathlib.Path:
    """A local directory for `path`: local paths as they are, `hf://org/name[@rev]` through the
    Hugging Face cache, other URLs (gs://, s3://, ...) copied into $PIRL_CACHE/checkpoints."""
    text = os.fspath(path)
    if text.startswith("hf://"):
        return _hf_snapshot(text)
    if "://" in text and not text.startswith("file://"):
        return _fsspec_copy(text)
    return pathlib.Path(text.removeprefix("file://")).expanduser()
