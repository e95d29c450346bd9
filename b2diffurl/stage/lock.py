"""One run per folder: a lock file in the run folder naming the host, process and job that hold it.

run_process.sh takes it for the whole loop (in the name of its own process id) and passes that
id to the scripts it starts in B2DIFFURL_LOCK_HOLDER, so they run under its lock; a script run
by hand takes the lock itself (the main process of a launch) for as long as it runs. A second
run on the same folder is refused (RunLockedError). A lock whose holder is gone, on this host,
is taken over with a warning; one held on another host is reported with that host's name.

The nodes of one cluster job each run their own run_process.sh on the same folder: they share
the lock when they present the same job identity (B2DIFFURL_JOB_ID, else Slurm's SLURM_JOB_ID,
which a requeued job keeps), while a different job, or a run with none, is refused as before.
The node of machine rank 0 releases it for the job. Torch-free: run_process.sh calls it as

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
from b2diffurl.paths import LOCK_FILE

log = logging.getLogger(__name__)
HOLDER_VARIABLE = "B2DIFFURL_LOCK_HOLDER"
JOB_VARIABLE = "B2DIFFURL_JOB_ID"


def job_identity() -> str | None:
    """The job this process belongs to, which every node of it presents: B2DIFFURL_JOB_ID, else
    SLURM_JOB_ID; None outside a job."""
    return os.environ.get(JOB_VARIABLE) or os.environ.get("SLURM_JOB_ID") or None


def _same_job(holder: dict, job: str | None) -> bool:
    return job is not None and holder.get("job") == job


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
    job = f"job {holder['job']}, " if holder.get("job") else ""
    return f"process {holder.get('pid')} on host {holder.get('host')} ({job}since {since})"


def acquire(run_dir: str, pid: int | None = None, job: str | None = None) -> None:
    """Lock `run_dir` for process `pid` (default this one) of `job` (default job_identity()).
    Shared with a holder of the same job; RunLockedError if a live process of another (or no)
    job holds it; a dead holder's lock on this host is taken over with a warning."""
    pid = os.getpid() if pid is None else pid
    job = job or job_identity()
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, LOCK_FILE)
    mine = {"host": socket.gethostname(), "pid": pid, "since": round(time.time(), 3), **({"job": job} if job else {})}
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
                if _same_job(holder, job):
                    log.info("run folder %s: sharing the lock of %s", run_dir, _describe(holder))
                    return
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


def release(run_dir: str, pid: int | None = None, job: str | None = None) -> None:
    """Remove the lock if process `pid` (default this one) on this host, or the job `job`
    (default job_identity()), holds it."""
    pid = os.getpid() if pid is None else pid
    holder = read_holder(run_dir)
    if holder and (_same_job(holder, job or job_identity())
                   or (holder.get("pid") == pid and holder.get("host") == socket.gethostname())):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(run_dir, LOCK_FILE))


@contextlib.contextmanager
def run_lock(run_dir: str) -> Iterator[None]:
    """Hold the run folder's lock within, unless run_process.sh (B2DIFFURL_LOCK_HOLDER) holds it
    for this script (or shares it, in this script's job), or this is not the main process of a launch."""
    holder_pid = os.environ.get(HOLDER_VARIABLE)
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    if holder_pid:
        holder = read_holder(run_dir)
        ours = holder is not None and (_same_job(holder, job_identity()) or (
            str(holder.get("pid")) == holder_pid and holder.get("host") == socket.gethostname()))
        if not ours:
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
