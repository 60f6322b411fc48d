"""How a setting is declared: :func:`setting` on a :class:`~worker.settings.Settings` field,
and the value parsers (with their bounds) that turn TOML, environment and flag values into
the field's type, raising ValueError with the reason."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from worker.sending.credentials import Secret
from worker.sending.ratelimit import RateSpec, parse_rate

DECLARATION = "setting"
_T = TypeVar("_T")


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
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                value = int(value)
            else:
                raise ValueError(f"expected an integer, got {value!r}")
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return int(value)

    return parse


def number(low: float, high: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {value!r}") from None
        if not low <= number <= high:
            raise ValueError(f"must be between {low:g} and {high:g}, got {number:g}")
        return number

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
    if isinstance(value, RateSpec):
        return value
    return parse_rate(text(value))


def one_of(*options: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        chosen = text(value).lower()
        if chosen not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")
        return chosen

    return parse
