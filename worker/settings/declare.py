"""How a setting is declared: :func:`setting` on a :class:`~worker.settings.Settings` field,
and the value parsers (with their bounds) that turn TOML, environment and flag values into
the field's type, raising ValueError with the reason.

Numbers in text are ASCII only, as input ids are: ``int()``, ``float()`` and
``str.isdigit()`` would also take other scripts' digits (``"٤٢"`` is 42 to them), which
nobody types on purpose into a purge of real records.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from worker.sending.credentials import Secret
from worker.settings.rate import UNITS, RateSpec, parse_rate
from worker.times import Unreadable, parse_duration

DECLARATION = "setting"
_T = TypeVar("_T")
_INTEGER = re.compile(r"-?[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# Every unit a rate may be given in, as parse_rate reads them: the help says all of them.
RATE_UNITS = tuple(UNITS)
RATE_HELP = (
    "request rate N/UNIT, N a number of requests (such as 100/minute or 2.5/s); UNIT is "
    + ", ".join(RATE_UNITS[:-1])
    + " or "
    + RATE_UNITS[-1]
)


@dataclass(frozen=True)
class Declaration:
    """How one setting is given: everything but its name and type, which are its field's."""

    default: Any
    parse: Callable[[Any], Any]
    help: str
    flag: str | None
    metavar: str | None
    commands: tuple[str, ...]
    required: tuple[str, ...]
    env: str | None
    toml: bool
    shown: str | None

    @property
    def switch(self) -> bool:
        """A flag without a value: giving it stores the opposite of the default."""
        return self.flag is not None and self.metavar is None

    @property
    def usage(self) -> str:
        """The flag as typed, ``--batch-size N``; empty for a setting without a flag."""
        return " ".join(part for part in (self.flag, self.metavar) if part)

    @property
    def default_text(self) -> str:
        """The default as documented; empty when there is none to show."""
        if self.shown is not None:
            return self.shown
        if self.default is None:
            return ""
        if isinstance(self.default, bool):
            return str(self.default).lower()
        if isinstance(self.default, float):
            return f"{self.default:g}"
        return str(self.default)

    @property
    def flag_help(self) -> str:
        """The help of the flag: the meaning, then the default and the environment variable."""
        notes = [f"default {self.default_text}"] if self.default_text and not self.switch else []
        if self.env:
            notes.append(f"env {self.env}")
        return f"{self.help} ({'; '.join(notes)})" if notes else self.help


def setting(
    default: _T,
    parse: Callable[[Any], Any],
    help: str,
    *,
    flag: str | None = None,
    commands: Iterable[str] = (),
    required: Iterable[str] = (),
    env: str | None = None,
    toml: bool = True,
    shown: str | None = None,
    secret: bool = False,
) -> _T:
    """Declare a :class:`Settings` field.

    ``parse`` turns a TOML, environment or flag value into the field's type, raising
    ValueError. ``flag`` is ``"--name METAVAR"``, or ``"--name"`` alone for a switch (a boolean
    flag storing the opposite of the default); the subcommands in ``commands`` offer it, and
    those in ``required`` require it. ``shown`` documents a default that the value cannot say,
    such as one derived at run time. A ``secret`` is left out of the repr.
    """
    name, _, metavar = (flag or "").partition(" ")
    declared = Declaration(
        default=default,
        parse=parse,
        help=help,
        flag=name or None,
        metavar=metavar or None,
        commands=tuple(commands),
        required=tuple(required),
        env=env,
        toml=toml,
        shown=shown,
    )
    return field(default=default, repr=not secret, metadata={DECLARATION: declared})


def integer(low: int, high: int) -> Callable[[Any], int]:
    """A parser of whole numbers from ``low`` to ``high``: an int, or text of ASCII digits
    with an optional ``-``. Leading zeros are accepted (``007`` is 7): the value decides, not
    the length of the text."""

    def parse(value: Any) -> int:
        number = _whole(value, low, high) if isinstance(value, str) else value
        if isinstance(number, bool) or not isinstance(number, int):
            raise ValueError(f"expected an integer, got {value!r}")
        if not low <= number <= high:
            raise ValueError(f"must be between {low} and {high}, got {number}")
        return number

    return parse


def _whole(text: str, low: int, high: int) -> int:
    """The integer ``text`` spells; one too long for the bounds is refused before int(),
    which would fail past 4300 digits with a message about Python, not about the value."""
    value = text.strip()
    if not _INTEGER.fullmatch(value):
        raise ValueError(f"expected an integer (digits 0-9), got {text!r}")
    sign, digits = ("-", value[1:]) if value.startswith("-") else ("", value)
    digits = digits.lstrip("0") or "0"
    if len(digits) > len(str(max(abs(low), abs(high)))):
        what = "a negative number" if sign else "a number"
        raise ValueError(f"must be between {low} and {high}, got {what} of {len(digits)} digits")
    return int(sign + digits)


def number(low: float, high: float) -> Callable[[Any], float]:
    """A parser of numbers from ``low`` to ``high``: an int or float, or decimal text of
    ASCII digits (``2.5``, ``1e3``)."""

    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"expected a number, got {value!r}")
        if isinstance(value, str) and not _DECIMAL.fullmatch(value.strip()):
            raise ValueError(f"expected a number (digits 0-9), got {value!r}")
        number = float(value)
        if not low <= number <= high:
            raise ValueError(f"must be between {low:g} and {high:g}, got {number:g}")
        return number

    return parse


def seconds(low: float, high: float) -> Callable[[Any], float]:
    """A parser of a time in seconds from ``low`` to ``high``: a number (``2.5``) or a
    duration in :mod:`worker.times`'s grammar (``90s``, ``10m``, ``1h30m``)."""
    within = number(low, high)

    def parse(value: Any) -> float:
        if isinstance(value, str) and not _DECIMAL.fullmatch(value.strip()):
            try:
                value = parse_duration(value, allow_zero=True).total_seconds()
            except Unreadable:
                raise ValueError(
                    "expected a number of seconds (digits 0-9), e.g. 2.5, or a duration such as "
                    f"90s, 10m or 1h30m, got {value!r}"
                ) from None
        return within(value)

    return parse


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
        return value.lower() in ("1", "true", "yes")
    raise ValueError(f"expected true or false, got {value!r}")


def text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value.strip()


def secret(value: Any) -> Secret:
    return Secret(str(value).strip())


def path(value: Any) -> Path:
    return Path(text(value)).expanduser()


def rate_spec(value: Any) -> RateSpec:
    """A rate such as ``10/second``; its number in ASCII digits, and finite (400 nines
    are infinity to float())."""
    if isinstance(value, RateSpec):
        return value
    spec = text(value)
    if not spec.isascii():
        raise ValueError(
            f"invalid rate {spec!r}: expected N/second, N/minute or N/hour (digits 0-9)"
        )
    rate = parse_rate(spec)
    if not math.isfinite(rate.requests):
        raise ValueError(f"invalid rate {spec!r}: the number of requests is too large")
    return rate


def one_of(*options: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        chosen = text(value).lower()
        if chosen not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")
        return chosen

    return parse
