"""`/v1/uploads`: large files sent in parts (regional retention only). Being built."""

from __future__ import annotations

from domicile.storage.interfaces import ContentStore

from .routes import Route

__all__ = ["UploadsEndpoint"]


class UploadsEndpoint:
    def __init__(self, store: ContentStore | None, region: str) -> None:
        self._store = store
        self._region = region

    def routes(self) -> list[Route]:
        return []

    async def start(self) -> None:
        """Nothing runs beside these requests yet."""

    async def aclose(self) -> None:
        """Nothing to stop yet."""
