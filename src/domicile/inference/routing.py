"""Which in-region provider serves a request (G2), and failing over between them.

The router is built from this region's providers only: a model no provider here offers is
404 `model_not_found`, even if another region has it. A request is tried on the model's
providers in order; a provider that cannot serve (`ProviderUnavailable`: connection error,
TLS failure, timeout, upstream 5xx) is skipped for the next, and when none is left the
answer is 503 `no_in_region_provider`. Nothing ever leaves the region: fail closed.

Capacity is not an outage: a provider whose connections are all in use (`ProviderBusy`, after
waiting its `pool_timeout_s`) is skipped the same way, but providers with a free connection
are tried before busy ones, and when busy providers are all that is left the answer is 503
`region_busy` with `retry-after` (the request may succeed a moment later), not
`no_in_region_provider`.

Order: config order when the model's providers have equal weights (a primary and its
fallbacks); otherwise a weighted random order per request (the Efraimidis-Spirakis draw),
so weights spread load while every provider remains a fallback for the others.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from domicile.config import Capability
from domicile.errors import ModelNotFound, NoInRegionProvider, RegionBusy
from domicile.observability.metrics import count_provider_error

from .providers.base import Provider, ProviderBusy, ProviderUnavailable

__all__ = ["ModelRouter"]

T = TypeVar("T")


class _Candidates:
    __slots__ = ("providers", "weighted")

    def __init__(self, providers: tuple[Provider, ...]) -> None:
        self.providers = providers
        self.weighted = len({p.weight for p in providers}) > 1


class ModelRouter:
    def __init__(self, region: str, providers: Sequence[Provider],
                 rng: Callable[[], float] = random.random) -> None:
        self.region = region
        self.providers = tuple(providers)
        self._rng = rng
        stray = [p.name for p in self.providers if p.region != region]
        if stray:  # G2 by construction: refuse to even hold another region's provider
            raise ValueError(f"providers {stray} are not of region {region}")
        by_model: dict[tuple[str, Capability], list[Provider]] = {}
        self._offered: dict[str, Provider] = {}
        for provider in self.providers:
            for model in provider.models:
                self._offered.setdefault(model, provider)
                for capability in provider.capabilities:
                    by_model.setdefault((model, capability), []).append(provider)
        self._routes = {key: _Candidates(tuple(ps)) for key, ps in by_model.items()}

    def models(self) -> list[tuple[str, Provider]]:
        """Each model offered here, with the first provider that offers it."""
        return list(self._offered.items())

    def offers(self, model: str) -> bool:
        return model in self._offered

    def has(self, capability: Capability) -> bool:
        return any(capability in p.capabilities for p in self.providers)

    def route(self, model: str, capability: Capability) -> Sequence[Provider]:
        """The providers to try, in order. 404 when none here offers the model for this."""
        candidates = self._routes.get((model, capability))
        if candidates is None:
            if model in self._offered:
                raise ModelNotFound(
                    f"The model `{model}` does not support {capability} in region "
                    f"{self.region}.", param="model")
            raise ModelNotFound(
                f"The model `{model}` is not offered in region {self.region}.", param="model")
        if not candidates.weighted:
            return candidates.providers
        rng = self._rng
        return sorted(candidates.providers,
                      key=lambda p: rng() ** (1.0 / p.weight), reverse=True)

    async def first_available(self, model: str, providers: Sequence[Provider],
                              attempt: Callable[[Provider], Awaitable[T]]
                              ) -> tuple[Provider, T]:
        """`attempt` on each provider in turn until one serves; 503 when none can
        (`region_busy` when some were only busy)."""
        if len(providers) > 1 and any(p.saturated for p in providers):
            # A free connection first; the order among the free (and the busy) stays.
            providers = sorted(providers, key=lambda p: p.saturated)
        failures: list[str] = []
        retry_after = 0
        for provider in providers:
            try:
                return provider, await attempt(provider)
            except ProviderUnavailable as exc:
                failures.append(f"{provider.name}: {exc.reason}")
                count_provider_error(self.region, provider.name, exc.reason,
                                     busy=isinstance(exc, ProviderBusy))
                if isinstance(exc, ProviderBusy):
                    retry_after = min(retry_after or exc.retry_after, exc.retry_after)
        if retry_after:
            raise RegionBusy(
                f"Region {self.region} is busy: the providers of model `{model}` have no "
                f"connection free ({'; '.join(failures)}). Please retry after {retry_after} "
                "s. The request was not sent to any other region.",
                headers=((b"retry-after", b"%d" % retry_after),))
        raise NoInRegionProvider(
            f"No provider in region {self.region} could serve model `{model}` "
            f"({'; '.join(failures)}). The request was not sent to any other region.")
