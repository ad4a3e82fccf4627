"""Routing a step's output to its log file, so that every job's story is in one place."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("mschange")


@contextlib.contextmanager
def logging_to(path: str | os.PathLike[str] | None, step: str) -> Iterator[logging.Logger]:
    """Send logging, stdout and stderr to ``path`` (append) for the duration of a step.

    The step's start, end and duration are logged; an exception is logged with its
    traceback and re-raised, so Snakemake marks the job failed and points at this log.
    """
    if path is None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        yield log
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "a", buffering=1)  # noqa: SIM115 (closed in finally)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    started = time.perf_counter()
    try:
        with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
            log.info("%s: started", step)
            yield log
            log.info("%s: finished in %.1f s", step, time.perf_counter() - started)
    except Exception as error:
        log.exception("%s: failed: %s", step, error)
        # Also on the console, where a user running snakemake looks first.
        print(f"mschange {step} failed: {error} (log: {path})", file=sys.__stderr__)
        raise
    finally:
        root.removeHandler(handler)
        stream.close()
