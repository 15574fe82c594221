"""G2: a model is served only by this region's providers, with failover among them, and when
none can serve the answer is 503, never another region."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import openai
import pytest

from domicile.errors import ModelNotFound, NoInRegionProvider, RegionBusy
from domicile.inference.providers import DevEchoProvider, Provider, ProviderUnavailable
from domicile.inference.providers.base import ProviderBusy
from domicile.inference.routing import ModelRouter
from tests.gateway.conftest import Stack
from tests.gateway.support import make_settings, provider

MESSAGES = [{"role": "user", "content": "route me"}]


def _providers(tmp_path: Path, *specs: tuple[str, list[str], int]) -> list[Provider]:
    settings = make_settings(tmp_path, eu=[
        provider(name, "dev-echo", models, weight=weight) for name, models, weight in specs
    ], us=[])
    return [DevEchoProvider(p, "eu") for p in settings.regions["eu"].providers]


def test_equal_weights_keep_config_order(tmp_path: Path) -> None:
    router = ModelRouter("eu", _providers(tmp_path, ("a", ["m"], 1), ("b", ["m"], 1),
                                          ("c", ["other"], 1)))
    assert [p.name for p in router.route("m", "chat")] == ["a", "b"]


def test_weights_spread_first_choice_but_keep_everyone_as_fallback(tmp_path: Path) -> None:
    router = ModelRouter("eu", _providers(tmp_path, ("a", ["m"], 3), ("b", ["m"], 1)),
                         rng=random.Random(7).random)
    orders = [tuple(p.name for p in router.route("m", "chat")) for _ in range(4000)]
    assert set(orders) == {("a", "b"), ("b", "a")}
    first = Counter(order[0] for order in orders)
    assert 0.7 < first["a"] / 4000 < 0.8


def test_unknown_model_is_not_found_naming_the_region(tmp_path: Path) -> None:
    router = ModelRouter("eu", _providers(tmp_path, ("a", ["m"], 1)))
    with pytest.raises(ModelNotFound, match="not offered in region eu"):
        router.route("gpt-4o", "chat")


def test_a_capability_the_model_lacks_counts_as_not_found(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, eu=[
        provider("a", "dev-echo", ["m"], capabilities=["chat"])], us=[])
    router = ModelRouter("eu", [DevEchoProvider(settings.regions["eu"].providers[0], "eu")])
    with pytest.raises(ModelNotFound, match="does not support embeddings in region eu"):
        router.route("m", "embeddings")


def test_a_router_refuses_to_hold_another_regions_provider(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, eu=[], us=[provider("u", "dev-echo", ["m"])])
    with pytest.raises(ValueError, match="not of region eu"):
        ModelRouter("eu", [DevEchoProvider(settings.regions["us"].providers[0], "us")])


async def test_first_available_fails_over_then_fails_closed(tmp_path: Path) -> None:
    router = ModelRouter("eu", _providers(tmp_path, ("a", ["m"], 1), ("b", ["m"], 1)))
    tried: list[str] = []

    async def attempt(p: Provider) -> str:
        tried.append(p.name)
        if p.name == "a":
            raise ProviderUnavailable(p.name, "HTTP 500")
        return "served"

    chosen, result = await router.first_available("m", router.route("m", "chat"), attempt)
    assert (chosen.name, result, tried) == ("b", "served", ["a", "b"])

    async def down(p: Provider) -> str:
        raise ProviderUnavailable(p.name, "ClientConnectorError")

    with pytest.raises(NoInRegionProvider, match=r"a: ClientConnectorError; b: Client"):
        await router.first_available("m", router.route("m", "chat"), down)


class _Pooled(DevEchoProvider):
    """A provider whose connections may all be in use."""

    full = False

    @property
    def saturated(self) -> bool:
        return self.full


async def test_providers_with_a_free_connection_are_tried_first(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, eu=[
        provider(name, "dev-echo", ["m"]) for name in ("a", "b", "c")], us=[])
    a, b, c = (_Pooled(p, "eu") for p in settings.regions["eu"].providers)
    router = ModelRouter("eu", [a, b, c])
    tried: list[str] = []

    async def attempt(p: Provider) -> str:
        tried.append(p.name)
        raise ProviderBusy(p.name, "all 1 connections in use", retry_after=2)

    a.full = True
    with pytest.raises(RegionBusy):
        await router.first_available("m", router.route("m", "chat"), attempt)
    assert tried == ["b", "c", "a"]  # the busy one last, the others in their order


async def test_busy_providers_make_the_region_busy_not_down(tmp_path: Path) -> None:
    router = ModelRouter("eu", _providers(tmp_path, ("a", ["m"], 1), ("b", ["m"], 1),
                                          ("c", ["m"], 1)))
    waits = {"a": 5, "b": 2}

    async def attempt(p: Provider) -> str:
        if p.name in waits:
            raise ProviderBusy(p.name, "all 8 connections in use", waits[p.name])
        raise ProviderUnavailable(p.name, "ClientConnectorError")

    with pytest.raises(RegionBusy) as caught:
        await router.first_available("m", router.route("m", "chat"), attempt)
    busy = caught.value
    assert (busy.status, busy.code) == (503, "region_busy")
    assert list(busy.headers) == [(b"retry-after", b"2")]  # the sooner of the two
    assert busy.message.startswith("Region eu is busy")
    assert "a: all 8 connections in use; b: all 8 connections in use; " \
           "c: ClientConnectorError" in busy.message


def test_failover_on_upstream_500_names_the_provider_that_served(stack: Stack) -> None:
    stack.upstreams["eu-a"].behaviour.mode = "fail"
    reply = stack.client().chat.completions.with_raw_response.create(
        model="fo-model", messages=MESSAGES)
    assert reply.headers["x-domicile-provider"] == "eu-b"
    assert reply.parse().choices[0].message.content == "eu-b says: route me"
    assert len(stack.upstreams["eu-a"].received) == 1
    assert len(stack.upstreams["eu-b"].received) == 1


def test_failover_when_the_first_upstream_drops_the_connection(stack: Stack) -> None:
    stack.upstreams["eu-a"].behaviour.mode = "drop"
    reply = stack.client().chat.completions.with_raw_response.create(
        model="fo-model", messages=MESSAGES)
    assert reply.headers["x-domicile-provider"] == "eu-b"


def test_the_first_provider_serves_when_it_is_up(stack: Stack) -> None:
    reply = stack.client().chat.completions.with_raw_response.create(
        model="fo-model", messages=MESSAGES)
    assert reply.headers["x-domicile-provider"] == "eu-a"
    assert stack.upstreams["eu-b"].received == []


def test_fail_closed_when_the_regions_only_provider_is_down(stack: Stack) -> None:
    stack.upstreams["eu-solo"].behaviour.mode = "fail"
    with pytest.raises(openai.InternalServerError) as caught:
        stack.client().chat.completions.create(model="solo-model", messages=MESSAGES)
    assert caught.value.status_code == 503
    assert caught.value.code == "no_in_region_provider"  # type: ignore[attr-defined]
    assert "eu-solo: HTTP 500" in caught.value.message
    # us serves a model of the same name: it must not have seen a thing.
    assert stack.upstreams["us-solo"].received == []


def test_fail_closed_when_nothing_listens(stack: Stack) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        stack.client().chat.completions.create(model="dead-model", messages=MESSAGES)
    assert caught.value.status_code == 503
    assert "eu-dead: ClientConnectorError" in caught.value.message


def test_a_slow_upstream_times_out_into_503(stack: Stack) -> None:
    stack.upstreams["eu-solo"].behaviour.delay = 1.0
    with pytest.raises(openai.InternalServerError) as caught:
        stack.client().chat.completions.create(model="impatient-model", messages=MESSAGES)
    assert caught.value.status_code == 503
    assert "eu-impatient: TimeoutError" in caught.value.message


def test_a_model_only_another_region_offers_is_404_here(stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        stack.client().chat.completions.create(model="us-only-model", messages=MESSAGES)
    assert caught.value.code == "model_not_found"  # type: ignore[attr-defined]
    assert "region eu" in caught.value.message
    assert stack.upstreams["us-solo"].received == []


def test_embeddings_on_a_chat_only_provider_is_404(stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        stack.client().embeddings.create(model="solo-model", input="x")
    assert caught.value.code == "model_not_found"  # type: ignore[attr-defined]
    assert stack.upstreams["eu-solo"].received == []


def test_an_upstream_4xx_passes_through_without_failover(stack: Stack) -> None:
    stack.upstreams["eu-a"].behaviour.mode = "reject"
    with pytest.raises(openai.BadRequestError) as caught:
        stack.client().chat.completions.create(model="fo-model", messages=MESSAGES)
    assert caught.value.code == "upstream_says_no"  # type: ignore[attr-defined]
    assert caught.value.body["message"] == "eu-a rejects this"  # type: ignore[index]
    assert caught.value.response.headers["x-domicile-provider"] == "eu-a"
    assert stack.upstreams["eu-b"].received == []


def test_models_lists_only_this_regions_models(stack: Stack) -> None:
    models = {m.id: m.owned_by for m in stack.client().models.list()}
    assert models["fo-model"] == "eu-a"
    assert models["dev-echo"] == "eu-dev"
    assert models["all-minilm-l6-v2"] == "eu-embeddings"
    assert "us-only-model" not in models
    us_models = {m.id for m in stack.client("dk-global-roaming0000000000", stack.us)
                 .models.list()}
    assert us_models == {"dev-echo", "solo-model", "us-only-model"}


def test_an_embeddings_capable_http_upstream_serves_embeddings(stack: Stack) -> None:
    result = stack.client().embeddings.create(model="remote-embedder", input=["a", "b"],
                                              encoding_format="float")
    assert [d.embedding for d in result.data] == [[0.5, 0.5, 0.0]] * 2
    assert stack.upstreams["eu-solo"].received[0].path == "/v1/embeddings"
