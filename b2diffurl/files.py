"""Atomic file writes: write to a temporary name in the same folder, fsync, rename over the target.

A reader (or a resumed run) sees the old file or the new one, never half of one. REPO is the
repository's root, where the configs and prompt files live.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import IO, Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_mode(base: int) -> int:
    """The permissions `open` (base 0o666) or `mkdir` (0o777) would give: `base` less the umask.
    A temporary file or folder is created owner-only; its final name should not be."""
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask


def staging_dir(parent: str, prefix: str) -> str:
    """A new temporary folder in `parent` (made if missing) with the permissions `mkdir` would
    give, to fill and then rename into place as a whole."""
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=prefix, dir=parent)
    os.chmod(staging, default_mode(0o777))  # mkdtemp's folder is owner-only
    return staging


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write(f)` on a temporary binary file, then rename it to `path` (with the
    permissions `open` would have given it)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        os.fchmod(handle, default_mode(0o666))
        with os.fdopen(handle, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_torch_save(obj, path: str) -> None:
    """torch.save `obj` to `path` atomically."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_json(obj, path: str) -> None:
    """JSON-dump `obj` to `path` atomically."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1, sort_keys=True).encode()))


def read_json(path: str):
    with open(path) as f:
        return json.load(f)
