from __future__ import annotations

import gzip
import zlib

import anyio
import pytest
from starlette.requests import Request

from kiln.errors import InvalidInputError, PayloadTooLargeError
from kiln.serve.body import check_content_length, inflate, read_body


def make_request(chunks: list[bytes], headers: dict[str, str] | None = None) -> tuple[Request, list[int]]:
    """A request whose body arrives in ``chunks``; the returned list counts the chunks read."""
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    pending = list(chunks)
    read: list[int] = []

    async def receive() -> dict[str, object]:
        body = pending.pop(0)
        read.append(len(body))
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    return Request(scope, receive), read


def read(request: Request, limit: int) -> bytes:
    async def main() -> bytes:
        return await read_body(request, limit)

    return anyio.run(main)


def test_content_length_checks() -> None:
    check_content_length(None, 10)
    check_content_length("10", 10)
    with pytest.raises(PayloadTooLargeError, match="request body of 11 bytes is over the limit of 10"):
        check_content_length("11", 10)
    with pytest.raises(InvalidInputError, match="not an integer"):
        check_content_length("ten", 10)
    with pytest.raises(InvalidInputError, match="negative"):
        check_content_length("-1", 10)


def test_reads_a_chunked_body_under_the_limit() -> None:
    request, _ = make_request([b"ab", b"cd", b"e"])
    assert read(request, 5) == b"abcde"


def test_declared_length_over_the_limit_is_refused_before_reading() -> None:
    request, chunks_read = make_request([b"x" * 100], {"content-length": "100"})
    with pytest.raises(PayloadTooLargeError):
        read(request, 10)
    assert chunks_read == []


def test_streamed_size_over_the_limit_stops_reading() -> None:
    request, chunks_read = make_request([b"x" * 6, b"x" * 6, b"x" * 6])  # no Content-Length
    with pytest.raises(PayloadTooLargeError, match="request body is over the limit of 10"):
        read(request, 10)
    assert chunks_read == [6, 6]


def test_gzip_and_deflate_bodies_are_inflated() -> None:
    payload = b'{"a": 1}' * 10
    for encoding, packed in (("gzip", gzip.compress(payload)), ("deflate", zlib.compress(payload))):
        request, _ = make_request([packed], {"content-encoding": encoding})
        assert read(request, 1000) == payload
    assert inflate(payload, "identity", 1000) == payload


def test_a_compressed_body_may_not_expand_past_the_limit() -> None:
    bomb = gzip.compress(b"\0" * 1_000_000)
    assert len(bomb) < 2000
    with pytest.raises(PayloadTooLargeError, match="decompressed request body is over the limit of 2000"):
        inflate(bomb, "gzip", 2000)


def test_bad_encodings() -> None:
    with pytest.raises(InvalidInputError, match="not valid gzip"):
        inflate(b"not gzip", "gzip", 100)
    with pytest.raises(InvalidInputError, match="'br' is not supported"):
        inflate(b"x", "br", 100)
