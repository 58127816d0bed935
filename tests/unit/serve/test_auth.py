"""Auth pieces without a server: route groups, key extraction, the exposure warning, the Guard."""

from __future__ import annotations

import anyio
import pytest

from kiln.errors import AuthError, ForbiddenError, RateLimitedError
from kiln.serve.auth import (
    ADMIN_PATH_PREFIX,
    Guard,
    exposure_warning,
    http_route_group,
    is_loopback,
    key_from,
    key_from_metadata,
)
from kiln.serve.keys import KeyStore, new_key
from kiln.serve.ratelimit import RateLimiter

FAST = 1000


@pytest.mark.parametrize(
    ("path", "group"),
    [
        ("/v2/health/live", None),
        ("/v2/health/ready", None),
        ("/v2/models/m/infer", "infer"),
        ("/v2/models/m/versions/2/infer", "infer"),
        ("/v1/embeddings", "infer"),
        ("/metrics", "metrics"),
        ("/v2/monitor/stats", "metrics"),
        ("/v2/repository/index", "admin"),
        ("/v2/repository/models/m/load", "admin"),
        ("/v2", "metadata"),
        ("/v2/models/m", "metadata"),
        ("/v2/models/m/ready", "metadata"),
        ("/v1/models", "metadata"),
        ("/no/such/route", "metadata"),
        ("/v2/health/live/", "metadata"),
    ],
)
def test_http_route_group(path: str, group: str | None) -> None:
    assert http_route_group(path) == group


def test_admin_prefix_matches_the_v2_adapter() -> None:
    v2_rest = pytest.importorskip("kiln.serve.v2_rest")
    assert getattr(v2_rest, "ADMIN_PATH_PREFIX", ADMIN_PATH_PREFIX) == ADMIN_PATH_PREFIX


@pytest.mark.parametrize(
    ("authorization", "x_api_key", "key"),
    [
        ("Bearer abc", None, "abc"),
        ("bearer   abc  ", None, "abc"),
        (None, "abc", "abc"),
        ("Bearer abc", "xyz", "abc"),
        ("Basic dXNlcjpwdw==", "xyz", "xyz"),
        ("Bearer", None, None),
        ("", " ", None),
        (None, None, None),
    ],
)
def test_key_from(authorization: str | None, x_api_key: str | None, key: str | None) -> None:
    assert key_from(authorization, x_api_key) == key


def test_key_from_metadata() -> None:
    assert key_from_metadata([("authorization", "Bearer k1")]) == "k1"
    assert key_from_metadata([("x-api-key", "k2"), ("other", "v")]) == "k2"
    assert key_from_metadata([("x-api-key-bin", b"k3")]) is None
    assert key_from_metadata(None) is None


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("example.com", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_exposure_warning_only_for_a_public_address_without_keys() -> None:
    assert exposure_warning("127.0.0.1", has_keys=False) is None
    assert exposure_warning("0.0.0.0", has_keys=True) is None
    warning = exposure_warning("0.0.0.0", has_keys=False)
    assert warning is not None and "WITHOUT API KEYS" in warning and "--api-keys" in warning


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_guard_authenticates_scopes_and_limits() -> None:
    key, record = new_key("a", models=("m1",), routes=("infer",), rate=1.0, burst=2, iterations=FAST)
    clock = FakeClock()
    guard = Guard(KeyStore((record,)), RateLimiter(clock))

    async def main() -> None:
        assert await guard.authenticate(key) == record
        assert await guard.authenticate(key) == record  # the cached path
        with pytest.raises(AuthError, match="requires an API key"):
            await guard.authenticate(None)
        with pytest.raises(AuthError, match="invalid API key"):
            await guard.authenticate(key + "x")

    anyio.run(main)
    guard.authorize_route(record, "infer")
    with pytest.raises(ForbiddenError, match="may not call metadata routes"):
        guard.authorize_route(record, "metadata")
    guard.authorize_model(record, "m1")
    with pytest.raises(ForbiddenError, match="may not use model 'm2'"):
        guard.authorize_model(record, "m2")
    guard.admit(record)
    guard.admit(record)
    with pytest.raises(RateLimitedError) as info:
        guard.admit(record)
    assert info.value.retry_after == 1
    clock.now += 1.0
    guard.admit(record)


def test_errors_never_echo_the_key() -> None:
    key, record = new_key("a", iterations=FAST)
    guard = Guard(KeyStore((record,)))

    async def main() -> None:
        with pytest.raises(AuthError) as info:
            await guard.authenticate(key + "typo")
        assert key not in str(info.value)

    anyio.run(main)
