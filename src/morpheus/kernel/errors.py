"""Exceptions raised by the kernel layer, carrying what a user needs to act on them."""

from __future__ import annotations

import errno
import os


class KernelError(OSError):
    """A bpf() (or related) system call failed.

    `operation` says what was attempted ("create map 'routes'", "update element of map 'fib'");
    errno and strerror are those of the failing call.
    """

    def __init__(self, err: int, operation: str, hint: str = "") -> None:
        message = f"{operation}: {os.strerror(err)} (errno {errno.errorcode.get(err, err)})"
        if hint:
            message += f"; {hint}"
        super().__init__(err, message)
        self.operation = operation
        self.hint = hint

    def __str__(self) -> str:
        return str(self.strerror)


class VerifierError(KernelError):
    """The kernel refused to load a program; `log` is the whole verifier log.

    `str()` shows the operation and the last lines of the log, where the verifier says why.
    """

    SUMMARY_LINES = 12

    def __init__(self, err: int, operation: str, log: str, truncated: bool = False) -> None:
        self.log = log
        self.truncated = truncated
        super().__init__(err, operation)

    @property
    def summary(self) -> str:
        lines = [line for line in self.log.rstrip().splitlines() if line.strip()]
        tail = lines[-self.SUMMARY_LINES :]
        return "\n".join(tail)

    def __str__(self) -> str:
        base = super().__str__()
        if not self.log.strip():
            return base + " (the verifier left no log)"
        note = " (log truncated)" if self.truncated else ""
        return f"{base}\nverifier log, last lines{note}:\n{self.summary}"


class BTFError(KernelError):
    """The kernel refused the BTF blob; `log` holds the kernel's BTF log."""

    def __init__(self, err: int, operation: str, log: str) -> None:
        self.log = log
        super().__init__(err, operation)

    def __str__(self) -> str:
        tail = "\n".join(self.log.strip().splitlines()[-8:])
        return f"{super().__str__()}\nBTF log:\n{tail}" if tail else super().__str__()
