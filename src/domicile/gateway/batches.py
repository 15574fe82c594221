"""`/v1/batches`: JSONL files of requests run in the region (regional retention only).
Being built."""

from __future__ import annotations

from collections.abc import Callable

from domicile.storage.interfaces import ContentStore

from .routes import Route, RouteTable

__all__ = ["BatchesEndpoint"]


class BatchesEndpoint:
    def __init__(self, store: ContentStore | None, region: str,
                 routes: Callable[[], RouteTable]) -> None:
        self._store = store
        self._region = region
        self._routes = routes

    def routes(self) -> list[Route]:
        return []

    async def start(self) -> None:
        """Nothing runs beside these requests yet."""

    async def aclose(self) -> None:
        """Nothing to stop yet."""
