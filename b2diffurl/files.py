"""Atomic file writes: write to a temporary name in the same folder, fsync, rename over the target.

A reader (or a resumed run) sees the old file or the new one, never half of one. A write that
fails (a full disk, a quota, an I/O error) raises DiskSpaceError naming the file and the free
space, and leaves no partial file. REPO is the repository's root, where the configs and prompt
files live.

Fault injection, for tests and tools/faults.sh: with B2DIFFURL_FAIL_WRITE=N the N-th write of
the process fails as a full disk would (ENOSPC); with B2DIFFURL_FAIL_WRITE=NAME every write of
a file named NAME does.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from typing import IO, Callable, Iterator

from b2diffurl.errors import DiskSpaceError, first_line

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


def existing_folder(path: str) -> str:
    """`path` if it exists, else its nearest existing parent."""
    folder = os.path.abspath(path)
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    return folder


def free_space(path: str) -> str:
    """The free space of the filesystem holding `path` (or its nearest existing parent), in words."""
    return f"{human_size(shutil.disk_usage(existing_folder(path)).free)} free"


def human_size(size: float) -> str:
    """Bytes in GiB from 0.1 GiB up, else in MiB."""
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 / 10 else f"{size / 2**20:.1f} MiB"


_writes = 0


def _injected_fault(path: str) -> None:
    """Raise ENOSPC where B2DIFFURL_FAIL_WRITE asks for it (see the module's docstring)."""
    global _writes
    fault = os.environ.get("B2DIFFURL_FAIL_WRITE", "")
    _writes += 1
    if fault and (fault == os.path.basename(path) or (fault.isdigit() and int(fault) == _writes)):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC) + " (injected by B2DIFFURL_FAIL_WRITE)", path)


def _is_write_failure(error: BaseException) -> bool:
    # torch.save reports a failed write from its C++ zip writer as a RuntimeError
    return isinstance(error, OSError) or (isinstance(error, RuntimeError) and (
        "inline_container" in str(error) or "PytorchStreamWriter" in str(error)))


@contextlib.contextmanager
def writing(path: str) -> Iterator[None]:
    """Around the writing of `path`: a write that fails raises DiskSpaceError naming `path` and
    the free space. The caller removes what it wrote."""
    try:
        _injected_fault(path)
        yield
    except DiskSpaceError:
        raise
    except BaseException as error:
        if not _is_write_failure(error):
            raise
        reason = getattr(error, "strerror", None) or first_line(error)
        raise DiskSpaceError(f"cannot write {path}: {reason} ({free_space(path)}); free some space "
                             "and rerun the same command") from None


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write(f)` on a temporary binary file, then rename it to `path` (with the
    permissions `open` would have given it)."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        with writing(path):
            os.makedirs(folder, exist_ok=True)
            handle, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
            os.fchmod(handle, default_mode(0o666))
            with os.fdopen(handle, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        if tmp is not None and os.path.exists(tmp):
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
    """The JSON in `path`; DamagedFileError (one line, naming the file) if it cannot be parsed."""
    from b2diffurl.errors import DamagedFileError

    with open(path) as f:
        try:
            return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DamagedFileError(f"{path} is damaged ({error}); {recovery(path)}") from None


def recovery(path: str) -> str:
    """How to recover from a damaged `path`: delete its stage's folder (and the later ones) and
    rerun; a run-level file is deleted alone."""
    folder = os.path.dirname(os.path.abspath(path))
    while folder != os.path.dirname(folder):
        name = os.path.basename(folder)
        if name.startswith("stage") and name[5:].isdigit():
            return f"delete {folder} and the stage folders after it, then rerun the same command"
        folder = os.path.dirname(folder)
    return "delete it and rerun the same command"
