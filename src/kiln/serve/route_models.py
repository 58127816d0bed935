"""The model a REST route's request names: resolved, labelled for metrics, checked against the API
key's model scope and, for task routes, against the task the route serves."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from kiln.errors import InvalidInputError, RequestError
from kiln.serve.auth import authorize_model
from kiln.serve.dataplane import DataPlane, ModelInfo
from kiln.serve.errors import ParamError
from kiln.serve.metrics import set_model_label


def resolve_model(
    dataplane: DataPlane,
    request: Request,
    name: str,
    task: str | None = None,
    route: str = "",
    routes_by_task: Mapping[str, str] | None = None,
) -> ModelInfo:
    """``name`` resolved (a 4xx on the ``model`` parameter when unknown or out of the key's scope);
    with ``task``, a model of another task is refused, pointing at its route in ``routes_by_task``."""
    try:
        info = dataplane.resolve(name)
    except RequestError as exc:
        raise ParamError(exc, "model") from None
    set_model_label(request, info.name)
    authorize_model(request, info.name)  # the API key's model scope (no-op without keys)
    if task is not None and info.task != task:
        other = (routes_by_task or {}).get(info.task)
        hint = f" (use {other})" if other else ""
        raise ParamError(
            InvalidInputError(
                f"model {info.name!r} is a {info.task!r} model; {route} serves {task} models{hint}"
            ),
            "model",
        )
    return info


class TaskRouteAdapter:
    """A REST adapter with one POST route (``path``) answered by :meth:`classify`."""

    path: ClassVar[str]

    def __init__(self, dataplane: DataPlane, max_request_bytes: int) -> None:
        self.dataplane = dataplane
        self.max_request_bytes = max_request_bytes

    def routes(self) -> list[BaseRoute]:
        return [Route(self.path, self.classify, methods=["POST"])]

    async def classify(self, request: Request) -> Response:
        raise NotImplementedError
