"""Quiet workers: daskdict's own errors reach the user once, as one clear exception.

A task that raises (a damaged chunk, NaN rows) makes each Dask worker log "Compute Failed"
with the task's traceback before the client re-raises the error. For daskdict's errors the
message already says what is wrong, so that log is noise on the terminal: a filter on the
``distributed.worker`` logger drops it, in this process and, through a worker plugin, in every
worker of a cluster daskdict computes on (including workers that join later). Other errors are
still logged.
"""

from __future__ import annotations

import logging
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from daskdict.errors import DaskdictError

WORKER_LOGGER = "distributed.worker"
PLUGIN_NAME = "daskdict-quiet-errors"


def _error_names() -> frozenset[str]:
    """Names of DaskdictError and all its subclasses."""
    names, todo = set(), [DaskdictError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return frozenset(names)


class DaskdictErrorFilter(logging.Filter):
    """Drops log records about a task that raised one of daskdict's own errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], DaskdictError):
            return False
        args = record.args if isinstance(record.args, tuple) else ()
        if str(record.msg).startswith("Compute Failed") and len(args) >= 4:
            # the worker logs the exception as text: its repr, "CorruptChunkError('...')"
            text = str(args[3])
            return not any(text.startswith(f"{name}(") for name in _error_names())
        return True


def install_filter() -> None:
    """Add :class:`DaskdictErrorFilter` to this process's worker logger (once)."""
    logger = logging.getLogger(WORKER_LOGGER)
    if not any(isinstance(f, DaskdictErrorFilter) for f in logger.filters):
        logger.addFilter(DaskdictErrorFilter())


class QuietDaskdictErrors(WorkerPlugin):
    """Installs :class:`DaskdictErrorFilter` in each worker process."""

    name = PLUGIN_NAME

    def setup(self, worker: Any) -> None:
        install_filter()


def quiet_workers(client: Any) -> None:
    """Install the filter here and in every worker of ``client``'s cluster, now and later."""
    install_filter()
    client.register_plugin(QuietDaskdictErrors(), name=PLUGIN_NAME)
