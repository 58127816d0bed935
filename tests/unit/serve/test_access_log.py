"""Request ids and the JSON access-log line."""

from __future__ import annotations

import json

from kiln.serve.access_log import AccessLine, access_line, request_id


def test_a_client_request_id_is_kept_when_sane() -> None:
    assert request_id("abc-123_XYZ:7") == "abc-123_XYZ:7"


def test_a_missing_or_odd_request_id_is_replaced() -> None:
    for bad in (None, "", "has space", "x" * 129, "tab\there", "ünïcode", "new\nline"):
        rid = request_id(bad)
        assert rid != bad and len(rid) == 32 and int(rid, 16) >= 0
    assert request_id(None) != request_id(None)


def test_access_line_is_one_json_object_with_the_documented_fields() -> None:
    line = access_line(
        request_id="r1",
        method="POST",
        route="/v2/models/{model_name}/infer",
        model="m",
        status=200,
        latency_ms=1.23456,
        key_id="alice",
        at=1_700_000_000.5,
    )
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2023-11-14T22:13:20.500Z",
        "request_id": "r1",
        "method": "POST",
        "route": "/v2/models/{model_name}/infer",
        "model": "m",
        "status": 200,
        "latency_ms": 1.235,
        "key_id": "alice",
    }


def test_access_line_without_model_or_key() -> None:
    doc = json.loads(
        access_line(
            request_id="r", method="GET", route="/v2", model="", status=401, latency_ms=0, key_id=None
        )
    )
    assert doc["model"] is None and doc["key_id"] is None and doc["status"] == 401


def test_fresh_request_ids_are_distinct_and_32_hex_digits() -> None:
    ids = {request_id(None) for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_an_access_line_is_made_when_formatted_with_the_time_it_was_logged() -> None:
    import logging

    line = AccessLine(
        request_id="r1", method="POST", route="/v2/x", model="m", status=200, latency_ms=1.23456, key_id=None
    )
    record = logging.LogRecord("kiln.access", logging.INFO, __file__, 1, line, None, None)
    first = json.loads(record.getMessage())
    assert first["request_id"] == "r1" and first["latency_ms"] == 1.235 and first["key_id"] is None
    assert json.loads(str(line))["time"] == first["time"]  # formatted later: same time
