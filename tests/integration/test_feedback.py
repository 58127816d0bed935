"""POST /v1/feedback stores labels by request id, and realised accuracy shows next to the estimate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy")

from sqlalchemy import create_engine, text  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from _fixtures.monitor_profile import CLASSES, classify_bundle_with_profile, reference_texts  # noqa: E402
from kiln.bundle.load import load_bundle  # noqa: E402
from kiln.serve.app import create_app  # noqa: E402
from kiln.settings import Settings  # noqa: E402

MODEL = "tiny-classify"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    bundle = classify_bundle_with_profile(tmp_path / "bundle")
    db = tmp_path / "log.db"
    settings = Settings(
        home=tmp_path,
        threads=1,
        monitor=True,
        monitor_db=f"sqlite:///{db}",
        monitor_sample=1.0,
        access_log=False,
    )
    with TestClient(create_app(load_bundle(bundle), settings)) as c:
        yield c


def classify(client: TestClient, texts: list[str], request_id: str) -> list[str]:
    response = client.post(
        "/v1/classify", json={"model": MODEL, "input": texts}, headers={"X-Request-ID": request_id}
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == request_id
    return [row["label"] for row in response.json()["data"]]


def test_feedback_is_stored_and_realised_accuracy_appears(client: TestClient) -> None:
    texts = reference_texts(30, seed=11)
    predicted = classify(client, texts, "req-feedback-1")
    assert client.app.state.request_log.flush(30)  # type: ignore[attr-defined]
    truth = list(predicted)
    for i in range(6):  # 6 of 30 wrong: realised accuracy 0.8
        truth[i] = CLASSES[1 - CLASSES.index(truth[i])]
    response = client.post("/v1/feedback", json={"request_id": "req-feedback-1", "labels": truth})
    assert response.status_code == 200
    body = response.json()
    assert body == {
        "object": "feedback",
        "request_id": "req-feedback-1",
        "stored": 30,
        "matched": True,
        "model": MODEL,
    }
    url = str(client.app.state.request_log.engine.url)  # type: ignore[attr-defined]
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM kiln_feedback")).scalar() == 30
        assert conn.execute(text("SELECT request_id FROM kiln_requests")).scalar() == "req-feedback-1"
        assert conn.execute(text("SELECT count(*) FROM kiln_samples WHERE label IS NOT NULL")).scalar() == 30
    engine.dispose()

    report = client.get("/v2/monitor/windows", params={"count": 1}).json()
    (window,) = report["windows"]
    assert window["samples"] == 30 and window["labelled"] == 30
    assert window["drift"]["accuracy_realised"]["value"] == pytest.approx(0.8)
    assert window["drift"]["accuracy_realised"]["n"] == 30
    assert 0.0 < window["drift"]["accuracy_estimate"]["value"] < 1.0
    assert report["reference_accuracy"] is not None and report["quality_line"] is not None
    page = client.get("/dashboard").text
    assert 'id="chart-quality"' in page and "realised (feedback)" in page

    # one label again, by class id and position: the latest wins
    again = client.post("/v1/feedback", json={"request_id": "req-feedback-1", "label": 1, "position": 0})
    assert again.status_code == 200 and again.json()["stored"] == 1


def test_feedback_mistakes_are_explained(client: TestClient) -> None:
    classify(client, ["good movie"], "req-2")
    assert client.app.state.request_log.flush(30)  # type: ignore[attr-defined]
    cases = [
        ({"request_id": "req-2", "label": "maybe"}, "not a class of the model"),
        ({"request_id": "req-2"}, "either label"),
        ({"request_id": "", "label": "pos"}, "request_id"),
        ({"request_id": "req-2", "label": "pos", "position": -1}, "position"),
        ({"request_id": "req-2", "label": "pos", "extra": 1}, "unknown fields"),
    ]
    for body, message in cases:
        response = client.post("/v1/feedback", json=body)
        assert response.status_code == 400, body
        assert message in response.text, body
    assert client.post("/v1/feedback", content=b"nope").status_code == 400
    unknown = client.post("/v1/feedback", json={"request_id": "never-seen", "label": "pos"})
    assert unknown.status_code == 200 and unknown.json()["matched"] is False
