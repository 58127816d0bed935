"""Request bodies read under a byte limit: the declared Content-Length first, then the streamed size.

``Content-Encoding: gzip`` / ``deflate`` bodies (tritonclient's request compression) are inflated under
the same limit, so a small compressed body cannot expand past it.
"""

from __future__ import annotations

import zlib

from starlette.requests import Request

from kiln.errors import InvalidInputError, PayloadTooLargeError


def _too_large(what: str, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"{what} is over the limit of {limit} bytes "
        "(send fewer or shorter texts, or raise KILN_MAX_REQUEST_BYTES)"
    )


def check_content_length(header: str | None, limit: int) -> None:
    if header is None:
        return
    try:
        declared = int(header)
    except ValueError:
        raise InvalidInputError(f"Content-Length {header!r} is not an integer") from None
    if declared < 0:
        raise InvalidInputError(f"Content-Length {header!r} is negative")
    if declared > limit:
        raise _too_large(f"request body of {declared} bytes", limit)


def inflate(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding`` (identity, gzip, deflate) without producing more than ``limit`` bytes."""
    enc = (encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        return body
    if enc in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif enc == "deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise InvalidInputError(f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none")
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInputError(f"request body is not valid {enc} data: {exc}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise _too_large("decompressed request body", limit)
    return out


async def read_body(request: Request, limit: int) -> bytes:
    """The whole (decoded) body, or ``PayloadTooLargeError`` as soon as it passes ``limit`` bytes."""
    check_content_length(request.headers.get("content-length"), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large("request body", limit)
        chunks.append(chunk)
    return inflate(b"".join(chunks), request.headers.get("content-encoding"), limit)
