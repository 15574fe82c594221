"""Model providers: one object per provider configured in a region.

`build_providers(region)` reads only that region's `providers` table (G2: a region's gateway
never holds another region's providers). The local embedding model is imported only when a
region configures it.
"""

from __future__ import annotations

from domicile.config import ProviderSettings, RegionSettings

from .base import Provider, ProviderResponse, ProviderUnavailable, UpstreamRejected
from .dev_echo import DevEchoProvider
from .openai_compatible import OpenAICompatibleProvider

__all__ = [
    "DevEchoProvider",
    "OpenAICompatibleProvider",
    "Provider",
    "ProviderResponse",
    "ProviderUnavailable",
    "UpstreamRejected",
    "build_provider",
    "build_providers",
]


def build_provider(settings: ProviderSettings, region: str) -> Provider:
    if settings.kind == "openai-compatible":
        return OpenAICompatibleProvider(settings, region)
    if settings.kind == "dev-echo":
        return DevEchoProvider(settings, region)
    if settings.kind == "local-embeddings":
        from .local_embeddings import LocalEmbeddingsProvider

        return LocalEmbeddingsProvider(settings, region)
    raise ValueError(f"unknown provider kind {settings.kind!r}")


def build_providers(region: RegionSettings) -> list[Provider]:
    return [build_provider(settings, region.name) for settings in region.providers]
