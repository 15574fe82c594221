"""Text embeddings for the region's own services (the workspace's GPT knowledge).

Through the same router and failover as the gateway's `/v1/embeddings` (G2: only this
region's providers; none able to serve is 503), with the region's embedding model: the first
model of the first provider that serves embeddings, an in-process `local-embeddings` one
preferred (nothing leaves the process).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from domicile.errors import NoInRegionProvider, UpstreamError
from domicile.web.jsonbody import dump_json

from .providers.base import Provider, ProviderResponse
from .routing import ModelRouter

__all__ = ["MAX_BATCH_INPUTS", "Embedder", "Vectors"]

# Inputs per embeddings request (OpenAI allows 2,048; smaller requests share the encoder
# better with the gateway's callers).
MAX_BATCH_INPUTS = 256
PREFERRED_KIND = "local-embeddings"

Vectors = npt.NDArray[np.float32]


def _embedding_model(router: ModelRouter) -> str | None:
    serving = [p for p in router.providers if "embeddings" in p.capabilities]
    preferred = [p for p in serving if p.kind == PREFERRED_KIND] or serving
    return preferred[0].models[0] if preferred else None


def _vectors(provider: str, answer: ProviderResponse, count: int) -> Vectors:
    """The rows of an OpenAI embeddings answer, in input order; 502 for anything else."""
    if answer.status != 200:
        raise UpstreamError(f"The embedding provider {provider} refused the request "
                            f"(status {answer.status}).")
    try:
        data = json.loads(answer.body)["data"]
        rows: list[Any] = [None] * count
        for item in data:
            rows[item["index"]] = item["embedding"]
        matrix = np.asarray(rows, dtype=np.float32)
    except (ValueError, TypeError, KeyError, IndexError):
        raise UpstreamError(f"The embedding provider {provider} answered with something "
                            "that is not embeddings.") from None
    if matrix.ndim != 2 or matrix.shape[0] != count or not np.isfinite(matrix).all():
        raise UpstreamError(f"The embedding provider {provider} answered with something "
                            "that is not embeddings.")
    return matrix


def _normalised(matrix: Vectors) -> Vectors:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0  # a zero vector stays zero (it matches nothing)
    unit: Vectors = (matrix / norms).astype(np.float32, copy=False)
    return unit


class Embedder:
    def __init__(self, router: ModelRouter) -> None:
        self.router = router
        self.model = _embedding_model(router)

    async def embed(self, texts: Sequence[str], *, owner: str) -> Vectors:
        """One float32 row of unit length per text, in order. `owner` = whose texts these
        are (a workspace id): the encoder is shared fairly by owner. 503 when no provider
        of the region serves embeddings."""
        model = self.model
        if model is None:
            raise NoInRegionProvider(f"No provider in region {self.router.region} serves "
                                     "embeddings.")
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        providers = self.router.route(model, "embeddings")
        parts: list[Vectors] = []
        for start in range(0, len(texts), MAX_BATCH_INPUTS):
            batch = list(texts[start:start + MAX_BATCH_INPUTS])
            parsed: dict[str, Any] = {"model": model, "input": batch,
                                      "encoding_format": "float"}
            body = dump_json(parsed)

            async def attempt(provider: Provider, body: bytes = body,
                              parsed: dict[str, Any] = parsed) -> ProviderResponse:
                return await provider.embeddings(body, parsed, owner=owner)

            served_by, answer = await self.router.first_available(model, providers, attempt)
            parts.append(_vectors(served_by.name, answer, len(batch)))
        if len({part.shape[1] for part in parts}) > 1:
            raise UpstreamError("The embedding providers answered with vectors of different "
                                "sizes.")
        return _normalised(np.concatenate(parts))
