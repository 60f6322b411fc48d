"""The API token: where it comes from, and how it is kept out of every output.

The token is read from ``UNLEASHX_TOKEN`` or from a file (a Kubernetes secret mount).
It is wrapped in :class:`Secret`, whose ``repr``/``str`` never show it; only the client
calls :meth:`Secret.reveal`, to put it in the ``token`` header.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from worker.errors import ConfigError


class Secret:
    """A string that refuses to be printed (not a dataclass: ``asdict`` would expose it)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def check_token(token: Secret, origin: str) -> Secret:
    """Refuse a token that cannot travel in an HTTP header: a line break, a space or any
    character that is not printable ASCII inside it (say, two lines in a token file).
    The message gives the position, never the token."""
    for position, char in enumerate(token.reveal(), start=1):
        if not "!" <= char <= "~":
            raise ConfigError(
                f"{origin}: the token holds a line break, a space or a character that is not "
                f"printable ASCII (character {position}); a token is one word on one line",
                key="token",
            )
    return token


def read_token_file(path: Path) -> Secret:
    """Read a token file; errors name the file, never its content."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise ConfigError(f"cannot read token file {path}: {reason}", key="token_file") from None
    if not text:
        raise ConfigError(f"token file {path} is empty", key="token_file")
    return check_token(Secret(text), f"token file {path}")


class TokenSource:
    """Hands out the current token; a file-based token may be re-read once after a 401."""

    def __init__(self, token: Secret | None, path: Path | None) -> None:
        if token is None and path is None:
            raise ConfigError(
                "no API token: set UNLEASHX_TOKEN, or token_file in the config / "
                "UNLEASHX_TOKEN_FILE / --token-file",
                key="token",
            )
        self._path = path
        if token is not None:
            self._token = check_token(token, "UNLEASHX_TOKEN")
        else:
            self._token = read_token_file(path)  # type: ignore[arg-type]
        self._reread = False
        self._known = [self._token]

    def current(self) -> Secret:
        return self._token

    def redact(self, text: str | None) -> str | None:
        """``text`` without any token this run has used: a server may echo the token in an
        error message, and messages are written to the audit log, logs and summaries."""
        if text is None:
            return None
        for token in self._known:
            text = text.replace(token.reveal(), "***")
        return text

    def rotate(self) -> bool:
        """Re-read the token file once (secret rotation); True if a new token was found."""
        if self._path is None or self._reread:
            return False
        self._reread = True
        try:
            fresh = read_token_file(self._path)
        except ConfigError as exc:
            # Imported here: the settings read this module, and --help must not load logging.
            import structlog

            structlog.get_logger("audience_purge.credentials").error(
                "token file could not be re-read after a 401", error=str(exc)
            )
            return False
        if fresh == self._token:
            return False
        self._token = fresh
        self._known.append(fresh)
        return True


def without_userinfo(url: str) -> str:
    """An http(s) URL with any user and password in it masked (for the audit log).

    Only the authority is masked, at its last ``@`` (where urllib and yarl both end the
    userinfo, once :func:`~worker.settings.check_base_url` has passed it), so an ``@`` in
    the path leaves the host shown; a URL whose authority is not where expected is masked
    whole, as :func:`redact_url` does.
    """
    scheme, sep, rest = url.partition("://")
    authority = urlsplit(url).netloc
    if "@" not in authority:
        return url
    if not sep or not rest.startswith(authority):
        return redact_url(url)
    return redact_url(f"{scheme}://{authority}") + rest[len(authority) :]


def redact_url(url: str) -> str:
    """A URL with its credentials masked (Redis URLs carry a password), for logs and audits.

    Split by hand at the *last* ``@``: a password may contain ``/`` or ``@``, which would
    fool a URL parser into showing it.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, _, host = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}:***@{host}" if colon else f"{scheme}://***@{host}"


# A URL's userinfo anywhere in a text: up to the last ``@`` before the URL ends (a password
# may hold ``@`` or ``/``), so that nothing of it shows.
_USERINFO = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]*@")


def redact_urls(text: str) -> str:
    """``text`` with the user and password of every URL in it masked: the one redaction
    for a URL-valued setting (base URL, Redis, Pushgateway, any later one) and for any log
    line, message or record that may quote one."""
    return _USERINFO.sub(lambda m: redact_url(m[0]), text) if "://" in text else text


def split_userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """``url`` without its userinfo, and the (user, password) it held, percent-decoded:
    for a client that sends them as HTTP basic auth rather than in the URL."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    if not sep or "@" not in authority:
        return url, None
    userinfo, _, host = authority.rpartition("@")
    user, _, password = userinfo.partition(":")
    return f"{scheme}://{host}{slash}{path}", (unquote(user), unquote(password))
