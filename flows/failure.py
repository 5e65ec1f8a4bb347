"""How the CLI reports a stage that raised: one line, the traceback once, the line again.

Without this, a failing stage printed three tracebacks (Prefect's task engine, its flow
engine, then Hydra's), 180-230 lines, before the reason.
"""
from __future__ import annotations

import logging
import os
import traceback


def failure_reason(err: BaseException) -> str:
    """One line: the stage that failed (build() notes it) and the error's first line."""
    note = next((n for n in getattr(err, "__notes__", []) if n.startswith("stage ")), "")
    where, _, kept = note.partition(" failed;")
    first = (str(err).strip().splitlines() or [""])[0]
    kept = f" ({kept.strip().split(' (')[0]})" if "kept in" in kept else ""  # the failed build's files
    return f"pipeline failed: {where + ': ' if where else ''}{type(err).__name__}: {first}{kept}"


def failure_report(err: BaseException) -> str:
    """The reason, the traceback without Prefect's engine frames, the reason again. An error raised in
    a worker process (a datatrove task) shows the worker's traceback, where it happened, not the pool's."""
    remote = next((e for e in _causes(err) if type(e).__name__ == "RemoteTraceback"), None)
    if remote is not None:  # multiprocessing's carrier of a worker's formatted traceback
        reason = failure_reason(err)
        worker_trace = str(remote).strip().strip('"').strip()
        return f"{reason}\n{worker_trace}\n(raised in a worker process)\n{reason}\n"
    trace = traceback.TracebackException.from_exception(err)
    for exc in _chain(trace):
        exc.stack = traceback.StackSummary.from_list(
            [f for f in exc.stack if f"{os.sep}prefect{os.sep}" not in f.filename])
    reason = failure_reason(err)
    return f"{reason}\n{''.join(trace.format())}{reason}\n"


def _causes(err: BaseException):
    seen = []
    while err is not None and err not in seen:
        seen.append(err)
        yield err
        err = err.__cause__ or err.__context__


def _chain(trace: traceback.TracebackException):
    seen = []
    while trace is not None and trace not in seen:
        seen.append(trace)
        yield trace
        trace = trace.__cause__ or trace.__context__


class _WithoutEngineTracebacks(logging.Formatter):
    """Prefect logs a failed task's and flow's traceback (three with ours): on the console keep
    its one-line message; the CLI prints the traceback once (failure_report). The Prefect API
    (UI) handler is not wrapped and keeps them."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        if not (record.exc_info and record.name.startswith("prefect.")):
            return self.inner.format(record)
        saved = record.exc_info, record.exc_text
        record.exc_info = record.exc_text = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text = saved


def engine_errors_in_one_line() -> None:
    """Wrap the console handlers (not log files) of the root logger; call once logging is set up."""
    for handler in logging.getLogger().handlers:
        console = isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
        if console and not isinstance(handler.formatter, _WithoutEngineTracebacks):  # Hydra's log file keeps them
            handler.setFormatter(_WithoutEngineTracebacks(handler.formatter))
