"""Logging for the scripts (main process only) and the append-only metrics file."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import sys
import time


def setup_logging(is_main_process: bool = True) -> logging.Logger:
    """Send the package's log records to stderr with a timestamp; quiet on other ranks."""
    logger = logging.getLogger("b2diffurl")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO if is_main_process else logging.WARNING)
    # The libraries' own loading bars and notices would drown the run's progress lines.
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return logger


def _jsonable(value):
    if hasattr(value, "item"):  # tensors and numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN; keep the line parseable
    return value


def append_metrics(path: str, **fields) -> None:
    """Append one JSON object as one whole line (a single write), with a wall-clock time. A write
    that fails (files.writing) leaves the file as it was."""
    from b2diffurl.files import writing

    record = {"time": round(time.time(), 3), **{k: _jsonable(v) for k, v in fields.items()}}
    line = json.dumps(record).encode() + b"\n"
    with writing(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        size = os.fstat(fd).st_size
        try:
            if os.write(fd, line) != len(line):
                raise OSError(errno.ENOSPC, "short write", path)
        except BaseException:
            os.ftruncate(fd, size)  # no half line
            raise
        finally:
            os.close(fd)


NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def read_metrics(path: str) -> list[dict]:
    """Every record of a metrics file, in order, with the non-finite numbers that append_metrics
    wrote as strings read back as floats."""
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [{k: NON_FINITE.get(v, v) if isinstance(v, str) else v for k, v in r.items()} for r in records]


def read_run_metrics(run: str) -> list[dict]:
    """Every record of every stage of a run (stage{k}/metrics.jsonl), in stage order."""
    from b2diffurl.paths import METRICS_FILE, stage_dirs

    records = []
    for _, folder in stage_dirs(run):
        path = os.path.join(folder, METRICS_FILE)
        if os.path.exists(path):
            records += read_metrics(path)
    return records
