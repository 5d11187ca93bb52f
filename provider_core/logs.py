"""Logging: one handler on standard error, as text or as JSON lines.

``[server] log_level`` / ``log_format`` (or ``LOG_LEVEL`` / ``LOG_FORMAT``
when launched by VirtRigaud) choose the level and the shape. Text is
``TIME LEVEL LOGGER: MESSAGE``; JSON is one object per line with ``time``
(ISO 8601, UTC), ``level``, ``logger``, ``message`` and, when there is
one, ``exception`` (the traceback's text), written by python-json-logger
(with orjson; UTF-8, no spaces).
A line logged while serving a call (in a backend's worker thread and the
call's background task too) carries the call's request id
(:mod:`provider_core.calls`): ``[request_id=…]`` before the message in
text, ``request_id`` in JSON; access lines add their fields to the JSON
object.

What goes into a message is the caller's business: secrets are never
passed to a logger, and URLs are logged through
:func:`provider_core.urls.redact`; the format changes nothing there.
Libraries' DEBUG lines are held to the same rule: urllib3's request lines
lose their query strings (signed URLs carry their signature there), and
botocore, boto3 and s3transfer, whose DEBUG lines print signed requests
and credentials, log at INFO at most.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import IO, Literal

from pythonjsonlogger.orjson import OrjsonFormatter

from . import calls

LogFormat = Literal["text", "json"]
TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Levels by the names accepted (VirtRigaud says ``warn``).
LEVELS = {"DEBUG": "DEBUG", "INFO": "INFO", "WARN": "WARNING", "WARNING": "WARNING", "ERROR": "ERROR", "CRITICAL": "CRITICAL"}


def level_name(value: str) -> str:
    """The logging level named by ``value`` (any case; ``warn`` is WARNING);
    ValueError for anything else."""
    level = LEVELS.get(value.strip().upper())
    if level is None:
        raise ValueError("must be debug, info, warn (warning), error or critical")
    return level


class CallFilter(logging.Filter):
    """Gives each record the request id of the call it was logged in (or none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        call = calls.current()
        if call is not None and not hasattr(record, "request_id"):
            record.request_id = call.request_id
        return True


class TextFormatter(logging.Formatter):
    """:data:`TEXT`, with ``[request_id=…]`` before the message of a call's lines."""

    def __init__(self) -> None:
        super().__init__(TEXT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        if request_id is None:
            return super().formatMessage(record)
        line = super().formatMessage(record)
        cut = len(line) - len(record.message)
        return f"{line[:cut]}[request_id={request_id}] {line[cut:]}"


def formatter(fmt: LogFormat) -> logging.Formatter:
    if fmt == "json":
        # python-json-logger's orjson encoder: a fifth of the CPU of its json
        # one per line, which counts at one access line per call.
        return OrjsonFormatter(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger", "exc_info": "exception"},
            timestamp="time",
        )
    return TextFormatter()


class QueryRedactor(logging.Filter):
    """Drops the query string from the request targets urllib3 logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, str) and "?" in a for a in record.args):
            record.args = tuple(
                f"{a.partition('?')[0]}?<redacted>" if isinstance(a, str) and "?" in a else a for a in record.args
            )
        return True


REDACTED = {"urllib3.connectionpool": QueryRedactor()}
"""Libraries' loggers whose lines are redacted, and how."""
AT_MOST_INFO = ("botocore", "boto3", "s3transfer")
"""Libraries' loggers whose DEBUG lines print secrets."""


class BatchingHandler(logging.StreamHandler):  # type: ignore[type-arg]  # the stream's type is not generic here
    """A StreamHandler that writes lines in batches: every ``interval``
    seconds from a thread of its own, at once from WARNING up, and when
    logging shuts down (at exit). At one access line per call, one write
    per line cost the serving thread more CPU than the rest of the line:
    each write lets go of the interpreter, which the event loop must then
    win back from the worker threads. A process killed outright loses at
    most ``interval`` seconds of INFO and DEBUG lines."""

    def __init__(self, stream: IO[str], interval: float = 0.1) -> None:
        super().__init__(stream)
        self.interval = interval
        self._pending: list[str] = []
        self._writer: threading.Thread | None = None

    def emit(self, record: logging.LogRecord) -> None:
        """Called with the handler's lock held (Handler.handle)."""
        try:
            self._pending.append(self.format(record) + self.terminator)
        except Exception:  # noqa: BLE001 - logging's own rule: a bad record is reported, never raised
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING:
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - as above: a failed write never reaches the caller
                self.handleError(record)
        elif self._writer is None:
            self._writer = threading.Thread(target=self._write_every_interval, name="log-writer", daemon=True)
            self._writer.start()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            lines, self._pending = self._pending, []
            if lines:
                self.stream.write("".join(lines))
            super().flush()

    def _write_every_interval(self) -> None:
        """Write the batch every interval; a failed write (a full
        non-blocking pipe, say) loses that batch, reported as logging
        reports a failed line, and the next batches are still written."""
        while True:
            time.sleep(self.interval)
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - the thread must outlive one failed write
                self.handleError(logging.makeLogRecord({"msg": "a batch of log lines"}))


_handler: logging.Handler | None = None


def configure(level: str = "INFO", fmt: LogFormat = "text") -> None:
    """Send log records at ``level`` or above to standard error in ``fmt``.

    Called again, it changes the level and the format. Where the program
    that imports vm-provider routes logs itself (the root logger has
    handlers that are not ours, as under pytest), only the level is set."""
    global _handler  # noqa: PLW0603 - the one handler of the process
    root = logging.getLogger()
    if _handler is None and not root.handlers:
        _handler = BatchingHandler(sys.stderr)
        _handler.addFilter(CallFilter())
        root.addHandler(_handler)
        # Neither format shows where in the source a line was logged, nor the
        # thread or process: skip finding them out (the logging HOWTO's
        # "Optimization"), several µs a line at one access line per call.
        logging._srcfile = None
        logging.logThreads = False
        logging.logProcesses = False
        logging.logMultiprocessing = False
    if _handler is not None and _handler in root.handlers:
        _handler.setFormatter(formatter(fmt))
    root.setLevel(level_name(level))
    for name, redactor in REDACTED.items():
        logging.getLogger(name).addFilter(redactor)  # once: the same filter is not added twice
    for name in AT_MOST_INFO:
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
