"""Exit codes: part of the public interface (documented in the README)."""

from __future__ import annotations

import enum

from worker.errors import FatalError, OutputError, ServiceUnavailable, UsageError


class ExitCode(enum.IntEnum):
    OK = 0  # every valid id deleted (rejected rows and duplicates do not change this)
    FAILED = 1  # the run finished, but some ids failed
    USAGE = 2  # usage, configuration or input error, found before anything was sent
    FATAL = 3  # aborted on a fatal API condition (bad token, wrong endpoint)
    UNAVAILABLE = 69  # sysexits EX_UNAVAILABLE: Redis could not be reached
    INTERNAL = 70  # sysexits EX_SOFTWARE: an unexpected error (a bug); the run stopped safely
    IO_ERROR = 74  # sysexits EX_IOERR: a file of the run could not be written; stopped safely
    INTERRUPTED = 75  # sysexits EX_TEMPFAIL: stopped by SIGTERM/SIGINT; re-run to continue


def finished_code(*, fatal: bool, interrupted: bool, failed: bool) -> ExitCode:
    """The code of a run that got under way: a fatal stop outranks a signal, which outranks
    failed ids."""
    if fatal:
        return ExitCode.FATAL
    if interrupted:
        return ExitCode.INTERRUPTED
    return ExitCode.FAILED if failed else ExitCode.OK


def exit_code_for(exc: BaseException) -> ExitCode | None:
    """The documented code of a run ended by ``exc`` (None: not an error, say a
    cancellation)."""
    match exc:
        case UsageError():
            return ExitCode.USAGE
        case FatalError():
            return ExitCode.FATAL
        case ServiceUnavailable():
            return ExitCode.UNAVAILABLE
        case KeyboardInterrupt():
            return ExitCode.INTERRUPTED
        case OutputError():
            return ExitCode.IO_ERROR
        case Exception():
            return ExitCode.INTERNAL
    return None
