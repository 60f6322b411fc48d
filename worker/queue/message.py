"""The message format of the work queue: one stream entry per batch; any producer may write it.

    campaign_id   decimal string, a positive 64-bit integer
    audience_ids  the ids, as decimal strings separated by commas ("101,102,103") or as a
                  JSON array ("[101, 102, 103]"); at least one, at most MAX_IDS
    ref           optional: a producer's reference (at most 200 characters), copied into the
                  audit records of the entry's ids

An entry with anything else in those fields, with one of them twice (XADD accepts
``audience_ids 1 audience_ids 2``), or with a field name or value (of any field, known or
not) that is not UTF-8, is malformed: it goes, whole and byte for byte, to the dead-letter
stream with the reason, and is acknowledged. Nothing of it is sent: an entry is either
trusted entirely or not at all.
"""

from __future__ import annotations

import re
from base64 import b64encode
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import orjson

from worker.input.validate import parse_id

MAX_IDS = 10_000
MAX_REF = 200
_SPLIT = re.compile(r"\s*,\s*")

# An entry's fields as Redis holds them: bytes, in order, a repeated field repeated.
Pairs = tuple[tuple[bytes, bytes], ...]
# Fields as a caller may give them: read from the stream, or text.
Fields = Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]]


class Malformed(ValueError):
    """A stream entry that is not a valid message (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """A valid message: what to delete, and where it came from."""

    entry_id: str
    campaign_id: int
    audience_ids: tuple[int, ...]
    ref: str | None


def parse_entry(entry_id: str, fields: Fields) -> Entry:
    """Validate one entry's fields (as read from the stream, or by name).

    Raises:
        Malformed: with the reason, for anything that is not a valid message.
    """
    fields = by_name(fields)
    campaign = parse_id(fields.get("campaign_id", ""))
    if isinstance(campaign, str):
        raise Malformed(f"campaign_id {campaign}")
    ids = _ids(fields.get("audience_ids", ""))
    ref = fields.get("ref")
    if ref is not None and len(ref) > MAX_REF:
        raise Malformed(f"ref is longer than {MAX_REF} characters")
    return Entry(entry_id, campaign, ids, ref)


def by_name(fields: Fields) -> Mapping[str, str]:
    """The fields by name, as text.

    Raises:
        Malformed: a field name or value is not UTF-8, or a field is repeated (which of its
            values the producer meant is unknown).
    """
    if isinstance(fields, Mapping):
        return fields
    named: dict[str, str] = {}
    for position, (raw_name, raw_value) in enumerate(fields, 1):
        name = _text(raw_name, f"the name of field {position}")
        value = _text(raw_value, f"field {name}")
        if name in named:
            raise Malformed(f"field {name} is repeated")
        named[name] = value
    return named


def _text(value: str | bytes, what: str) -> str:
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Malformed(
            f"{what} is not UTF-8 (byte 0x{value[exc.start]:02x} at offset {exc.start})"
        ) from None


def shown(fields: Fields) -> dict[str, str]:
    """Fields for an audit record or a message: text as is; a name or value that is not
    UTF-8 as ``base64:`` and its bytes, so that nothing of it is lost or misread."""
    pairs = fields.items() if isinstance(fields, Mapping) else fields
    return {_shown(name): _shown(value) for name, value in pairs}


def _shown(value: str | bytes) -> str:
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + b64encode(value).decode("ascii")


def _ids(text: str) -> tuple[int, ...]:
    text = text.strip()
    if text.startswith("["):
        try:
            raw = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise Malformed("audience_ids is not a valid JSON array") from None
        if not isinstance(raw, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in raw
        ):
            raise Malformed("audience_ids must be an array of integers")
        cells = [str(v) for v in raw]
    else:
        cells = _SPLIT.split(text) if text else []
    if not cells:
        raise Malformed("audience_ids is empty")
    if len(cells) > MAX_IDS:
        raise Malformed(f"more than {MAX_IDS} audience_ids")
    out: list[int] = []
    for cell in cells:
        value = parse_id(cell)
        if isinstance(value, str):
            raise Malformed(f"audience_id {cell!r}: {value}")
        out.append(value)
    return tuple(dict.fromkeys(out))


def encode(campaign_id: int, audience_ids: Sequence[int], ref: str | None) -> dict[str, str]:
    fields = {"campaign_id": str(campaign_id), "audience_ids": ",".join(map(str, audience_ids))}
    if ref:
        fields["ref"] = ref
    return fields
