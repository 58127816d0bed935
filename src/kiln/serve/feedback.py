"""``POST /v1/feedback``: true labels that arrive after the request, for realised accuracy per window.

Every response carries ``X-Request-ID`` (``kiln.serve.access_log``) and the request log keeps it. Later, when
the truth is known, a client sends::

    {"request_id": "…", "label": "fresh"}                  the label of the request's input 0
    {"request_id": "…", "label": "fresh", "position": 2}   ... of its input 2
    {"request_id": "…", "labels": ["fresh", "rotten"]}     one label per input, in order

A label is a class name of the model (or its integer class id); for a classifier it is checked against the
model's classes. The answer says how many labels were stored and whether the request is in the log yet
(``matched``; a request still in the writer's queue is matched later, when it is written). The latest
label sent for an input wins. The route needs an API key allowed to call ``infer`` routes and the model.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from kiln.errors import InvalidInputError, RequestError, UnknownModelError
from kiln.serve.access_log import KEY_ID_KEY
from kiln.serve.auth import authorize_model
from kiln.serve.body import read_body
from kiln.serve.errors import error_response
from kiln.serve.metrics import set_model_label

if TYPE_CHECKING:
    from kiln.monitor.requestlog import RequestLog
    from kiln.serve.dataplane import DataPlane

PATH = "/v1/feedback"
MAX_LABELS = 4096
_VALID_ID_CHARS = 128


def parse_feedback(body: bytes) -> tuple[str, list[tuple[int, str]]]:
    """(request id, [(position, label), ...]) from a feedback body; else ``InvalidInputError``."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInputError('the body is not JSON: send {"request_id": ..., "label": ...}') from None
    if not isinstance(data, dict):
        raise InvalidInputError("the body must be a JSON object with request_id and label (or labels)")
    unknown = sorted(set(data) - {"request_id", "label", "labels", "position"})
    if unknown:
        raise InvalidInputError(f"unknown fields {unknown}: use request_id, label, position or labels")
    rid = data.get("request_id")
    if not isinstance(rid, str) or not 0 < len(rid) <= _VALID_ID_CHARS or not rid.isprintable() or " " in rid:
        raise InvalidInputError(
            "request_id must be the X-Request-ID a response carried (1-128 printable characters, no spaces)"
        )
    if ("label" in data) == ("labels" in data):
        raise InvalidInputError(
            "give either label (one input) or labels (one per input), not both or neither"
        )
    if "labels" in data:
        labels = data["labels"]
        if "position" in data:
            raise InvalidInputError("position goes with label, not with labels (labels start at input 0)")
        if not isinstance(labels, list) or not labels or len(labels) > MAX_LABELS:
            raise InvalidInputError(f"labels must be a list of 1 to {MAX_LABELS} labels, one per input")
        pairs = list(enumerate(labels))
    else:
        position = data.get("position", 0)
        if not isinstance(position, int) or isinstance(position, bool) or position < 0:
            raise InvalidInputError("position must be a whole number >= 0 (the input's index in the request)")
        pairs = [(position, data["label"])]
    out = []
    for position, label in pairs:
        if isinstance(label, bool) or not isinstance(label, (str, int)) or label == "":
            raise InvalidInputError(f"label {label!r} must be a class name or an integer class id")
        out.append((position, str(label)[:200]))
    return rid, out


def check_labels(labels: list[tuple[int, str]], classes: tuple[str, ...]) -> list[tuple[int, str]]:
    """Labels as class names of a classifier with ``classes`` (integer ids are mapped to names)."""
    if not classes:
        return labels
    out = []
    for position, label in labels:
        if label in classes:
            out.append((position, label))
        elif label.isdigit() and int(label) < len(classes):
            out.append((position, classes[int(label)]))
        else:
            raise InvalidInputError(
                f"label {label!r} is not a class of the model; its classes: {list(classes)}"
            )
    return out


class FeedbackAdapter:
    """The feedback route over the request log's database (``None``: the server keeps no log)."""

    def __init__(self, request_log: RequestLog | None, dataplane: DataPlane, max_request_bytes: int) -> None:
        self.request_log = request_log
        self.dataplane = dataplane
        self.max_request_bytes = max_request_bytes

    def routes(self) -> list[BaseRoute]:
        return [Route(PATH, self.feedback, methods=["POST"])]

    def _logged_model(self, request_id: str) -> str | None | bool:
        """The model the logged request was for (``None``: it named none), ``False``: not logged (yet)."""
        from sqlalchemy import select

        from kiln.monitor.store import RequestRecord

        assert self.request_log is not None
        with self.request_log.engine.connect() as conn:
            row = conn.execute(
                select(RequestRecord.model).where(RequestRecord.request_id == request_id).limit(1)
            ).first()
        return False if row is None else row[0]

    def _store(self, request_id: str, labels: list[tuple[int, str]], key_id: str | None) -> None:
        from sqlalchemy import delete, insert

        from kiln.monitor.store import FeedbackRecord

        assert self.request_log is not None
        now = datetime.now(timezone.utc)
        positions = [p for p, _ in labels]
        with self.request_log.engine.begin() as conn:
            conn.execute(
                delete(FeedbackRecord).where(
                    FeedbackRecord.request_id == request_id, FeedbackRecord.position.in_(positions)
                )
            )
            conn.execute(
                insert(FeedbackRecord),
                [
                    {"request_id": request_id, "position": p, "label": lab, "ts": now, "key_id": key_id}
                    for p, lab in labels
                ],
            )

    async def feedback(self, request: Request) -> Response:
        if self.request_log is None:
            return error_response(
                PATH, 404, "this server keeps no request log (it was started with --no-monitor): no feedback"
            )
        body = await read_body(request, self.max_request_bytes)
        request_id, labels = parse_feedback(body)
        model = await anyio.to_thread.run_sync(self._logged_model, request_id)
        matched = model is not False
        if isinstance(model, str):
            try:
                info = self.dataplane.resolve(model)
            except (UnknownModelError, RequestError):
                info = None
            if info is not None:
                set_model_label(request, info.name)
                authorize_model(request, info.name)
                labels = check_labels(labels, tuple(info.labels))
        state: dict[str, Any] = request.scope.get("state") or {}
        key_id = state.get(KEY_ID_KEY)
        await anyio.to_thread.run_sync(
            self._store, request_id, labels, None if key_id is None else str(key_id)
        )
        return JSONResponse(
            {
                "object": "feedback",
                "request_id": request_id,
                "stored": len(labels),
                "matched": matched,
                "model": model if isinstance(model, str) else None,
            }
        )


def feedback_routes(
    request_log: RequestLog | None, dataplane: DataPlane, max_request_bytes: int
) -> list[BaseRoute]:
    return FeedbackAdapter(request_log, dataplane, max_request_bytes).routes()
