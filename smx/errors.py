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
