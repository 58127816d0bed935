"""``multipart/form-data`` bodies (RFC 7578) split into their parts, in memory.

The body has already been read under the request size limit (``body.read_body``), so parsing needs no
streaming: each part's headers are read (``Content-Disposition``'s ``name`` and ``filename``,
``Content-Type``) and its content is a slice of the body. Malformed bodies (no boundary, a part without
headers or a closing delimiter, too many parts or header bytes) raise ``InvalidInputError`` naming the
fault (more than ``max_parts`` parts: ``PayloadTooLargeError``). Parts with ``Content-Transfer-Encoding``
other than binary, 8bit or 7bit are refused (RFC 7578 deprecates it; browsers, curl and requests never
send it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kiln.errors import InvalidInputError, PayloadTooLargeError

MAX_HEADER_BYTES = 8192
"""Most bytes of headers one part may have."""
_PARAM = re.compile(r';\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{1,70}$")


@dataclass(frozen=True)
class Part:
    """One part: its form field ``name``, ``filename`` (file parts), ``content_type`` and bytes."""

    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def header_params(value: str) -> tuple[str, dict[str, str]]:
    """A header value's main token and its ``; key=value`` parameters (quoted values unquoted; keys lower
    case): ``form-data; name="file"`` -> ``("form-data", {"name": "file"})``."""
    main, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for match in _PARAM.finditer(";" + rest):
        key, raw = match.group(1).lower(), match.group(2).strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params.setdefault(key, raw)
    return main.strip().lower(), params


def boundary_of(content_type: str) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type, or ``InvalidInputError``."""
    kind, params = header_params(content_type)
    if kind != "multipart/form-data":
        raise InvalidInputError(f"Content-Type {kind!r} is not multipart/form-data")
    boundary = params.get("boundary", "")
    if not _BOUNDARY.match(boundary) or boundary.endswith(" "):
        raise InvalidInputError(
            "the multipart/form-data Content-Type has no valid boundary parameter (1-70 characters)"
        )
    return boundary.encode("ascii")


def _part(raw: bytes, index: int) -> Part:
    if raw.startswith(b"\r\n"):
        head, content = b"", raw[2:]
    else:
        end = raw.find(b"\r\n\r\n", 0, MAX_HEADER_BYTES + 4)
        if end < 0:
            raise InvalidInputError(
                f"multipart part {index} has no end of headers (a blank line) within {MAX_HEADER_BYTES} bytes"
            )
        head, content = raw[:end], raw[end + 4 :]
    headers: dict[str, str] = {}
    for line in head.decode("latin-1").split("\r\n") if head else ():
        key, colon, value = line.partition(":")
        if not colon or not key.strip():
            raise InvalidInputError(f"multipart part {index} has a malformed header line {line[:60]!r}")
        headers.setdefault(key.strip().lower(), value.strip())
    disposition = headers.get("content-disposition")
    if disposition is None:
        raise InvalidInputError(f"multipart part {index} has no Content-Disposition header")
    kind, params = header_params(disposition)
    if kind != "form-data" or "name" not in params:
        raise InvalidInputError(
            f'multipart part {index}: Content-Disposition must be form-data with a name (name="file")'
        )
    encoding = headers.get("content-transfer-encoding", "binary").lower()
    if encoding not in ("binary", "8bit", "7bit"):
        raise InvalidInputError(
            f"multipart part {index} has Content-Transfer-Encoding {encoding!r}: send the raw bytes"
        )
    return Part(params["name"], params.get("filename"), headers.get("content-type"), content)


def parse_multipart(body: bytes, content_type: str, max_parts: int) -> list[Part]:
    """The parts of a ``multipart/form-data`` body, in order; at most ``max_parts``."""
    boundary = boundary_of(content_type)
    delimiter = b"--" + boundary
    if body.startswith(delimiter):
        pos = 0
    else:  # a preamble before the first delimiter
        found = body.find(b"\r\n" + delimiter)
        if found < 0:
            raise InvalidInputError("the multipart body does not contain its boundary: is it multipart?")
        pos = found + 2
    parts: list[Part] = []
    while True:
        pos += len(delimiter)
        if body[pos : pos + 2] == b"--":
            return parts  # the close delimiter; the epilogue is ignored
        eol = body.find(b"\r\n", pos)
        if eol < 0 or body[pos:eol].strip(b" \t"):
            raise InvalidInputError("the multipart body has a malformed boundary line")
        start = eol + 2
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise InvalidInputError(
                "the multipart body ends before its closing boundary: it is truncated or malformed"
            )
        if len(parts) == max_parts:
            raise PayloadTooLargeError(f"the multipart body has more than {max_parts} parts")
        parts.append(_part(body[start:end], len(parts)))
        pos = end + 2
