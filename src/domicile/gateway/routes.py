"""The gateway's routes: one table, read by the dispatcher, usage metadata and the OpenAPI
document alike, so none of them can drift from the others.

A `Route` is a method, a path template (`/v1/files/{file_id}/content`), the handler and the
OpenAPI operation it implements. `RouteTable.match` finds a request's route: an exact dict
hit for paths without ids (the hot path: chat, embeddings), else a walk over the templates
of that many segments. A path some route serves under another method is a 405 naming the
methods it allows; any other path is a 404. A path's template is what usage keeps, never the
path itself (a path is client text, G4).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from domicile.errors import MethodNotAllowed, NotFound
from domicile.tenancy.grants import ApiKeyGrant

from .http import UNKNOWN_ROUTE, Exchange

__all__ = ["Endpoint", "Route", "RouteHandler", "RouteTable"]

# Path parameters are in `call.params`, in the template's order.
RouteHandler = Callable[[Exchange, ApiKeyGrant], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Route:
    """One operation the gateway serves.

    `retained` names the feature for a route that keeps content: a zero-retention project
    is refused it (400 `zero_retention`) before anything else is looked at (G4).
    `operation` is the OpenAPI `operationId` (OpenAI's own where the route is OpenAI's).
    """

    method: str
    template: str
    handler: RouteHandler = field(compare=False, repr=False)
    operation: str
    retained: str | None = None
    segments: tuple[str | None, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        parts = self.template.split("/")
        object.__setattr__(self, "segments", tuple(
            None if part.startswith("{") and part.endswith("}") else part for part in parts))

    @property
    def has_params(self) -> bool:
        return None in self.segments

    def params_of(self, parts: list[str]) -> tuple[str, ...] | None:
        """The path parameters if `parts` (a path split on "/") fit this template."""
        if len(parts) != len(self.segments):
            return None
        params: list[str] = []
        for literal, part in zip(self.segments, parts, strict=True):
            if literal is None:
                if not part:
                    return None
                params.append(part)
            elif literal != part:
                return None
        return tuple(params)


class Endpoint(Protocol):
    """A group of routes with the work it runs beside its requests (a queue's worker), started
    and stopped with the gateway."""

    def routes(self) -> list[Route]: ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


class RouteTable:
    """The routes of one gateway, looked up by method and path."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes: tuple[Route, ...] = tuple(routes)
        self._exact: dict[tuple[str, str], Route] = {}
        self._methods: dict[str, list[str]] = {}  # exact path -> methods
        self._templated: dict[int, list[Route]] = {}
        seen: set[tuple[str, str]] = set()
        features: dict[str, set[str | None]] = {}
        for route in self.routes:
            key = (route.method, route.template)
            if key in seen:
                raise ValueError(f"two routes for {route.method} {route.template}")
            seen.add(key)
            if route.has_params:
                self._templated.setdefault(len(route.segments), []).append(route)
            else:
                self._exact[key] = route
                self._methods.setdefault(route.template, []).append(route.method)
            features.setdefault(_resource(route.template), set()).add(route.retained)
        self._retained = {resource: next(iter(kinds)) for resource, kinds in features.items()
                          if len(kinds) == 1 and None not in kinds}

    def exact(self, method: str, path: str) -> Route | None:
        """The route of a path without ids: one dict lookup."""
        return self._exact.get((method, path))

    def match(self, method: str, path: str) -> tuple[Route, tuple[str, ...]]:
        """The route and path parameters of a request; `NotFound` or `MethodNotAllowed`."""
        route = self._exact.get((method, path))
        if route is not None:
            return route, ()
        allowed = list(self._methods.get(path, ()))
        parts = path.split("/")
        for candidate in self._templated.get(len(parts), ()):
            params = candidate.params_of(parts)
            if params is None:
                continue
            if candidate.method == method:
                return candidate, params
            allowed.append(candidate.method)
        if allowed:
            methods = ", ".join(sorted(set(allowed)))
            raise MethodNotAllowed(f"Method {method} is not allowed on this path (allowed: "
                                   f"{methods}).", headers=((b"allow", methods.encode()),))
        raise NotFound(f"Invalid URL ({method} {path})")

    def template_of(self, path: str) -> str:
        """The template of the route serving `path` under any method, else `UNKNOWN_ROUTE`."""
        if path in self._methods:
            return path
        parts = path.split("/")
        for candidate in self._templated.get(len(parts), ()):
            if candidate.params_of(parts) is not None:
                return candidate.template
        return UNKNOWN_ROUTE

    def retained_feature(self, path: str) -> str | None:
        """The feature named by the routes under `path`'s resource (`/v1/files/…`) when all of
        them keep content: such a path is refused to zero-retention projects even when no
        route serves it, so a probe learns nothing but the retention rule (G4)."""
        return self._retained.get(_resource(path))


def _resource(path: str) -> str:
    """`/v1/<resource>` of a path."""
    return "/".join(path.split("/", 3)[:3])
