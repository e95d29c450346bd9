"""One run per folder: a lock file in the run folder naming the host and process that hold it.

run_process.sh takes it for the whole loop (in the name of its own process id) and passes that
id to the scripts it starts in B2DIFFURL_LOCK_HOLDER, so they run under its lock; a script run
by hand takes the lock itself (the main process of a launch) for as long as it runs. A second
run on the same folder is refused (RunLockedError). A lock whose holder is gone, on this host,
is taken over with a warning; one held on another host is reported with that host's name.
Torch-free: run_process.sh calls it as

    python -m b2diffurl.stage.lock acquire RUN_DIR PID
    python -m b2diffurl.stage.lock release RUN_DIR PID
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import tempfile
import time
from typing import Iterator

from b2diffurl.errors import RunLockedError
from b2diffurl.stage.paths import LOCK_FILE

log = logging.getLogger(__name__)
HOLDER_VARIABLE = "B2DIFFURL_LOCK_HOLDER"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def read_holder(run_dir: str) -> dict | None:
    """{"host", "pid", "since"} of the lock's holder; None if the folder is not locked."""
    try:
        with open(os.path.join(run_dir, LOCK_FILE)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # cut short: a holder that died while writing it
        return {"host": socket.gethostname(), "pid": -1, "since": 0}


def _describe(holder: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return f"process {holder.get('pid')} on host {holder.get('host')} (since {since})"


def acquire(run_dir: str, pid: int | None = None) -> None:
    """Lock `run_dir` for process `pid` (default this one). RunLockedError if a live process
    holds it; a dead holder's lock on this host is taken over with a warning."""
    pid = os.getpid() if pid is None else pid
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, LOCK_FILE)
    mine = {"host": socket.gethostname(), "pid": pid, "since": round(time.time(), 3)}
    handle, tmp = tempfile.mkstemp(prefix=".tmp-lock-", dir=run_dir)
    try:
        with os.fdopen(handle, "w") as f:
            json.dump(mine, f)
        for _ in range(2):
            try:
                os.link(tmp, path)  # atomic: fails if the lock exists, and the lock is never half-written
                return
            except FileExistsError:
                holder = read_holder(run_dir)
                if holder is None:
                    continue  # released in between
                if holder.get("host") != mine["host"]:
                    raise RunLockedError(f"run folder {run_dir} is in use by {_describe(holder)}; if no run is "
                                         f"left there, delete {path}")
                if holder.get("pid") == pid:
                    return
                if _alive(holder.get("pid", -1)):
                    raise RunLockedError(f"run folder {run_dir} is in use by {_describe(holder)}: wait for it to end "
                                         "or set another exp_name")
                log.warning("run folder %s was locked by %s, which is gone; taking the lock over", run_dir,
                            _describe(holder))
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
        raise RunLockedError(f"run folder {run_dir}: could not take its lock {path}")
    finally:
        os.remove(tmp)


def release(run_dir: str, pid: int | None = None) -> None:
    """Remove the lock if process `pid` (default this one) on this host holds it."""
    pid = os.getpid() if pid is None else pid
    holder = read_holder(run_dir)
    if holder and holder.get("pid") == pid and holder.get("host") == socket.gethostname():
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(run_dir, LOCK_FILE))


@contextlib.contextmanager
def run_lock(run_dir: str) -> Iterator[None]:
    """Hold the run folder's lock within, unless run_process.sh (B2DIFFURL_LOCK_HOLDER) holds it
    for this script, or this is not the main process of a launch."""
    holder_pid = os.environ.get(HOLDER_VARIABLE)
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    if holder_pid:
        holder = read_holder(run_dir)
        if holder is None or str(holder.get("pid")) != holder_pid or holder.get("host") != socket.gethostname():
            raise RunLockedError(f"run folder {run_dir} is not locked by the run_process.sh ({holder_pid}) that "
                                 "started this script")
        yield
        return
    acquire(run_dir)
    try:
        yield
    finally:
        release(run_dir)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("acquire", "release"):
        print("usage: python -m b2diffurl.stage.lock acquire|release RUN_DIR PID", file=sys.stderr)
        return 2
    action, run_dir, pid = argv
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    try:
        (acquire if action == "acquire" else release)(run_dir, int(pid))
    except RunLockedError as error:
        from b2diffurl.errors import exit_code

        print(f"error: {error}", file=sys.stderr)
        return exit_code(error)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
