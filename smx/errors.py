"""Errors a user can cause. The CLI prints their message and exits with code 2, never a traceback."""

from __future__ import annotations

from collections.abc import Iterator


class UserError(Exception):
    """A problem the user can fix: the message names the file, the key path or line, and the fix."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def exception_chain(error: BaseException) -> Iterator[BaseException]:
    """`error` and what it wraps, nearest first: the exception it was raised from or while handling, and Dynamo's
    `inner_exception`. Libraries wrap the cause a user can fix (a full disk, a missing compiler) in their own."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = getattr(current, "inner_exception", None) or current.__cause__ or current.__context__


def failure_summary(error: str) -> str:
    """One line of a failed job's recorded error for a listing: what ended it.

    The record is the worker's reason and the job log's last lines, which may reach back into earlier attempts (the
    log is appended to, each attempt under a `==== … ====` header), so only the last attempt's lines count. A job that
    reported a user error printed it as `error: …`, and the lines after it continue that message (a library's text
    may itself span lines), so that line says the most; a job killed by a signal said nothing of it, so its log is
    not the cause; otherwise the last line is the exception that ended it.
    """
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    if not lines:
        return ""
    if lines[0].startswith("killed by signal"):
        return lines[0]
    headers = [number for number, line in enumerate(lines) if line.startswith("==== ") and line.endswith(" ====")]
    last_attempt = lines[headers[-1] + 1:] if headers else lines
    reported = [line for line in last_attempt if line.startswith("error: ")]
    return reported[-1].removeprefix("error: ") if reported else (last_attempt or lines)[-1]
