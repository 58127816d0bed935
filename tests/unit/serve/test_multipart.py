"""``multipart/form-data`` parsing: what curl, requests and browsers send, and malformed bodies."""

from __future__ import annotations

import pytest

from kiln.errors import InvalidInputError, PayloadTooLargeError
from kiln.serve.multipart import boundary_of, header_params, parse_multipart

CT = "multipart/form-data; boundary=XyZ"


def body(*parts: bytes, preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    return preamble + b"".join(b"--XyZ\r\n" + p + b"\r\n" for p in parts) + b"--XyZ--\r\n" + epilogue


def field(name: str, value: bytes, extra: str = "") -> bytes:
    return f'Content-Disposition: form-data; name="{name}"{extra}\r\n\r\n'.encode() + value


def test_fields_and_files_keep_their_bytes() -> None:
    blob = b"\x00\xff\r\nx--XyZ not at a line start\r\nend\r\n"
    raw = body(
        field("model", b"tiny"),
        field("file", blob, '; filename="a \\"b\\".jpg"\r\nContent-Type: image/jpeg'),
        preamble=b"ignored preamble\r\n",
        epilogue=b"ignored epilogue",
    )
    model, file = parse_multipart(raw, CT, 4)
    assert (model.name, model.filename, model.data) == ("model", None, b"tiny")
    assert (file.name, file.filename, file.content_type, file.data) == (
        "file",
        'a "b".jpg',
        "image/jpeg",
        blob,
    )


def test_boundaries_quoted_or_not_and_header_parameters() -> None:
    assert boundary_of('multipart/form-data; boundary="a b:c"') == b"a b:c"
    assert boundary_of("Multipart/Form-Data;boundary=abc; charset=utf-8") == b"abc"
    assert header_params('form-data; name="x;y"; filename=z.png') == (
        "form-data",
        {"name": "x;y", "filename": "z.png"},
    )
    for bad in ("multipart/form-data", "multipart/form-data; boundary=", "application/json; boundary=a"):
        with pytest.raises(InvalidInputError):
            boundary_of(bad)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "does not contain its boundary"),
        (b"--XyZ\r\n" + field("model", b"x"), "ends before its closing boundary"),
        (body(b"\r\nno headers"), "no Content-Disposition"),
        (body(b"Content-Disposition: attachment\r\n\r\nx"), "must be form-data with a name"),
        (body(b"Garbage line\r\n\r\nx"), "malformed header line"),
        (body(b"X-Long: " + b"a" * 9000 + b"\r\n\r\nx"), "no end of headers"),
        (body(field("file", b"eA==", "\r\nContent-Transfer-Encoding: base64")), "Content-Transfer-Encoding"),
        (b"--XyZjunk\r\n" + field("a", b"1") + b"\r\n--XyZ--", "malformed boundary line"),
    ],
)
def test_malformed_bodies_say_what_is_wrong(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_multipart(raw, CT, 4)


def test_too_many_parts_is_too_large() -> None:
    with pytest.raises(PayloadTooLargeError, match="more than 2 parts"):
        parse_multipart(body(*[field("file", b"x")] * 3), CT, 2)
