"""The Responses API (`/v1/responses`), served on top of chat completions.

`input` (a string or a list of messages) and `instructions` become chat messages, the chat
answer becomes a Response object (`resp_…`, one assistant message with `output_text`,
`usage` in input/output tokens). Any in-region chat provider can therefore serve it, with
the same routing and failover as `/v1/chat/completions`.

Retention decides what is kept (G4):
- zero: stateless. `store: true`, `background: true`, `previous_response_id` and reading a
  stored response are refused with `zero_retention`; an absent `store` means "do not store".
- regional: `store` true or absent keeps the response and its conversation in the region's
  encrypted store; `GET /v1/responses/{id}` reads it back and `previous_response_id`
  continues it.
Streaming and tools are not offered here (400 with a pointer to chat completions).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

from domicile.errors import InvalidInput, NotFound, UpstreamError, ZeroRetentionViolation
from domicile.inference.providers.shapes import new_id
from domicile.inference.routing import ModelRouter
from domicile.storage.interfaces import ContentStore, TenantRef
from domicile.tenancy.grants import ApiKeyGrant

from .http import Exchange, dump_json, model_of, parse_json_object
from .residency import content_store_for, tenant_of
from .routes import Route

__all__ = ["ResponsesEndpoint", "to_chat_request"]

KIND = "response"
_RESPONSE_ID = re.compile(r"^resp_[A-Za-z0-9]{1,64}$")
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
_ROLES = frozenset({"user", "assistant", "system", "developer"})
# Responses parameter -> chat completions parameter, where they mean the same.
_PASSED_ON = (("temperature", "temperature"), ("top_p", "top_p"),
              ("max_output_tokens", "max_tokens"), ("user", "user"))


def _content(content: object, role: str) -> tuple[str | list[dict[str, Any]], bool]:
    """A Responses message content as chat content, and whether it holds an image."""
    if isinstance(content, str):
        return content, False
    if not isinstance(content, list):
        raise InvalidInput("A message's `content` must be a string or a list of parts.",
                           param="input")
    parts: list[dict[str, Any]] = []
    has_image = False
    for part in content:
        if not isinstance(part, dict):
            raise InvalidInput("Each content part must be an object.", param="input")
        kind = part.get("type")
        if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image: dict[str, Any] = {"url": part["image_url"]}
            if part.get("detail"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
            has_image = True
        else:
            raise InvalidInput(f"Content parts of type `{kind}` are not supported here; use "
                               "input_text, output_text or input_image with an image_url.",
                               param="input")
    if not has_image:  # plain text: the form every chat upstream takes, for every role
        return "".join(part["text"] for part in parts), False
    if role != "user":
        raise InvalidInput("Only user messages may hold images.", param="input")
    return parts, True


def _input_messages(value: object) -> tuple[list[dict[str, Any]], bool]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}], False
    if not isinstance(value, list) or not value:
        raise InvalidInput("`input` must be a string or a non-empty list of messages.",
                           param="input")
    messages: list[dict[str, Any]] = []
    has_image = False
    for item in value:
        if not isinstance(item, dict):
            raise InvalidInput("Each `input` item must be an object.", param="input")
        kind = item.get("type", "message")
        role = item.get("role")
        if kind != "message" or role not in _ROLES:
            raise InvalidInput(
                f"Input items of type `{kind}` are not supported by this gateway's Responses "
                "API; it takes messages with a role of user, assistant, system or developer.",
                param="input")
        content, image = _content(item.get("content"), role)
        has_image = has_image or image
        messages.append({"role": "system" if role == "developer" else role,
                         "content": content})
    return messages, has_image


def _response_format(text: object) -> dict[str, Any] | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    if fmt["type"] == "json_schema":
        schema = {key: fmt[key] for key in ("name", "schema", "strict", "description")
                  if key in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidInput(f"text.format type `{fmt['type']}` is not supported.", param="text")


def to_chat_request(parsed: dict[str, Any], history: list[dict[str, Any]]
                    ) -> tuple[dict[str, Any], list[dict[str, Any]], bool]:
    """(the chat request, the conversation to keep, whether it holds an image).

    `instructions` lead the chat messages but are not part of the kept conversation: as in
    OpenAI's API, a continued response does not inherit the previous one's instructions.
    """
    if parsed.get("tools"):
        raise InvalidInput("Tools are not supported on /v1/responses by this gateway; use "
                           "/v1/chat/completions.", param="tools")
    new, has_image = _input_messages(parsed.get("input"))
    conversation = [*history, *new]
    messages = list(conversation)
    instructions = parsed.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.insert(0, {"role": "system", "content": instructions})
    chat: dict[str, Any] = {"model": parsed["model"], "messages": messages}
    for source, target in _PASSED_ON:
        if parsed.get(source) is not None:
            chat[target] = parsed[source]
    response_format = _response_format(parsed.get("text"))
    if response_format is not None:
        chat["response_format"] = response_format
    return chat, conversation, has_image


def _response_object(parsed: dict[str, Any], chat_answer: dict[str, Any], *, stored: bool
                     ) -> tuple[dict[str, Any], str]:
    choices = chat_answer.get("choices") or [{}]
    message = choices[0].get("message") or {}
    text = message.get("content") or ""
    if not isinstance(text, str):
        text = ""
    usage = chat_answer.get("usage") or {}
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    truncated = choices[0].get("finish_reason") == "length"
    response = {
        "id": new_id("resp_"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "incomplete" if truncated else "completed",
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
        "instructions": parsed.get("instructions"),
        "max_output_tokens": parsed.get("max_output_tokens"),
        "model": chat_answer.get("model") or parsed["model"],
        "output": [{
            "type": "message",
            "id": new_id("msg_"),
            "status": "incomplete" if truncated else "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }],
        "parallel_tool_calls": True,
        "previous_response_id": parsed.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "store": stored,
        "temperature": parsed.get("temperature"),
        "text": parsed.get("text") or {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": parsed.get("top_p"),
        "truncation": "disabled",
        "usage": {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion,
        },
        "user": parsed.get("user"),
        "metadata": parsed.get("metadata") or {},
    }
    return response, text


class ResponsesEndpoint:
    def __init__(self, router: ModelRouter, store: ContentStore | None) -> None:
        self._router = router
        self._store = store

    async def start(self) -> None:
        """Nothing runs beside these requests."""

    async def aclose(self) -> None:
        """Nothing to stop."""

    def routes(self) -> list[Route]:
        return [
            Route("POST", "/v1/responses", self.create, "createResponse"),
            Route("GET", "/v1/responses/{response_id}", self.retrieve, "getResponse"),
            Route("DELETE", "/v1/responses/{response_id}", self.delete, "deleteResponse"),
        ]

    def _stored(self, grant: ApiKeyGrant, feature: str) -> tuple[ContentStore, TenantRef]:
        return (content_store_for(grant, self._store, feature),
                tenant_of(grant, self._router.region))

    async def create(self, call: Exchange, grant: ApiKeyGrant) -> None:
        parsed = parse_json_object(await call.read_body())
        call.model = model_of(parsed)
        zero = grant.retention == "zero"
        if parsed.get("background") is True:
            if zero:
                raise ZeroRetentionViolation(
                    "Background responses are kept until read, and this project has zero "
                    "data retention.", param="background")
            raise InvalidInput("Background responses are not supported by this gateway.",
                               param="background")
        if parsed.get("store") is True and zero:
            raise ZeroRetentionViolation(
                "`store: true` keeps the response, and this project has zero data retention. "
                "Send `store: false` (or omit it).", param="store")
        if parsed.get("stream") is True:
            raise InvalidInput("Streaming is not supported on /v1/responses by this gateway; "
                               "use /v1/chat/completions with `stream: true`.", param="stream")
        keep = parsed.get("store") is not False and not zero
        previous = parsed.get("previous_response_id")
        history: list[dict[str, Any]] = []
        if previous is not None:
            store, tenant = self._stored(grant, "`previous_response_id`")
            history = (await self._load(store, tenant, previous, "previous_response_id")
                       )["conversation"]
        chat, conversation, has_image = to_chat_request(parsed, history)
        providers = self._router.route(call.model, "vision" if has_image else "chat")
        chat_body = dump_json(chat)
        provider, answer = await self._router.first_available(
            call.model, providers, lambda p: p.chat(chat_body, chat))
        call.provider = provider.name
        call.prompt_tokens, call.completion_tokens = answer.prompt_tokens, answer.completion_tokens
        if answer.status != 200:  # the upstream's own error, already in OpenAI's shape
            await call.respond(answer.status, answer.body, answer.content_type)
            return
        try:
            chat_answer = json.loads(answer.body)
        except ValueError:
            raise UpstreamError(f"Provider {provider.name} answered with invalid JSON.") from None
        response, text = _response_object(parsed, chat_answer, stored=keep)
        if keep:
            store, tenant = self._stored(grant, "Storing a response")
            record = {"response": response,
                      "conversation": [*conversation, {"role": "assistant", "content": text}]}
            await asyncio.to_thread(store.put_record, tenant, KIND, response["id"],
                                    dump_json(record))
        await call.respond_json(response)

    async def _load(self, store: ContentStore, tenant: TenantRef, response_id: object,
                    param: str) -> dict[str, Any]:
        raw = None
        if isinstance(response_id, str) and _RESPONSE_ID.match(response_id):
            raw = await asyncio.to_thread(store.get_record, tenant, KIND, response_id)
        if raw is None:
            raise NotFound(f"Response with id '{response_id}' not found.", param=param)
        record: dict[str, Any] = json.loads(raw)
        return record

    async def retrieve(self, call: Exchange, grant: ApiKeyGrant) -> None:
        response_id = call.params[0]
        store, tenant = self._stored(grant, "Reading a stored response")
        record = await self._load(store, tenant, response_id, "response_id")
        await call.respond_json(record["response"])

    async def delete(self, call: Exchange, grant: ApiKeyGrant) -> None:
        response_id = call.params[0]
        store, tenant = self._stored(grant, "Deleting a stored response")
        deleted = bool(_RESPONSE_ID.match(response_id)) and await asyncio.to_thread(
            store.delete_record, tenant, KIND, response_id)
        if not deleted:
            raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
        await call.respond_json({"id": response_id, "object": "response", "deleted": True})
