"""The Responses API's shapes and their translation onto chat completions: plain functions.

A Responses request becomes one chat request (`to_chat_request`): `input` items (messages,
`function_call`, `function_call_output`) become chat messages (`tool_calls`, `tool`
messages), `instructions` lead them as a system message, function `tools` and `tool_choice`
take chat's form. A chat answer becomes the Response's `output` items (`output_from_chat`):
one assistant `message` with its `output_text`, then one `function_call` per tool call.

`ResponseDraft` builds the Response object, the same for a finished answer, a stored one,
a background one still `queued`, and every snapshot a stream carries, so each has exactly
the shape of OpenAI's `Response` (the SDK validates it strictly): `logprobs` on text parts,
every `usage` detail, nothing sent as `null` that OpenAI's schema does not allow.

Nothing here does I/O; the endpoint (`responses.py`) and the stream translator
(`responses_stream.py`) use these.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from domicile.errors import InvalidInput
from domicile.inference.providers.shapes import new_id

__all__ = [
    "ChatRequest",
    "ResponseDraft",
    "assistant_message",
    "check_params",
    "function_call_item",
    "message_item",
    "output_from_chat",
    "output_text_part",
    "to_chat_request",
    "usage_object",
]

_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
_INPUT_ROLES = frozenset({"user", "assistant", "system", "developer"})
# Responses parameter -> chat completions parameter, where they mean the same.
_PASSED_ON = (("temperature", "temperature"), ("top_p", "top_p"),
              ("max_output_tokens", "max_tokens"), ("user", "user"))
# Echoed in the Response object when the request gave them (OpenAI's schema has no `null`
# for these, so an absent one is left out rather than sent as null).
_ECHOED_IF_GIVEN = ("user", "safety_identifier", "prompt_cache_key", "service_tier",
                    "top_logprobs", "max_tool_calls")
_CHAT_FINISH = {"length": "max_output_tokens", "content_filter": "content_filter"}
_IMAGE_DETAILS = frozenset({"auto", "low", "high"})
# A type name worth quoting back in an error; anything else is client text, never echoed.
_TYPE_NAME = re.compile(r"[a-z][a-z0-9_.]{0,63}")


def _is(value: object, options: frozenset[str]) -> bool:
    """`value in options` for JSON values (a list or an object is not hashable)."""
    return isinstance(value, str) and value in options


def _named(kind: object) -> str:
    """A client's `type` as an error may name it: quoted if it looks like a type name."""
    if isinstance(kind, str) and _TYPE_NAME.fullmatch(kind):
        return f"type `{kind}`"
    return "this type"


@dataclass(slots=True)
class ChatRequest:
    """What a Responses request becomes: the chat request, the chat conversation to keep
    (without `instructions`, which a continued response does not inherit), whether it holds
    an image, and this request's input as Responses items (for `input_items`)."""

    chat: dict[str, Any]
    conversation: list[dict[str, Any]]
    has_image: bool
    items: list[dict[str, Any]] = field(default_factory=list)


# -- parameters ----------------------------------------------------------------------------

# What each parameter the Response echoes may be (null is "not given" for all of them), so
# that every 200 validates against OpenAI's schema and a wrong one is OpenAI's 400 naming it.
_STRING_PARAMS = ("user", "safety_identifier", "prompt_cache_key", "instructions",
                  "previous_response_id")
_BOOL_PARAMS = ("store", "background", "stream", "parallel_tool_calls")
_NUMBER_PARAMS = (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0))
_INT_PARAMS = (("max_output_tokens", 1, 2**31 - 1), ("top_logprobs", 0, 20),
               ("max_tool_calls", 1, 2**31 - 1))
_SERVICE_TIERS = frozenset({"auto", "default", "flex", "scale", "priority"})
_VERBOSITY = frozenset({"low", "medium", "high"})
_TOOL_CHOICES = frozenset({"none", "auto", "required"})
_SCHEMA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MAX_METADATA = 16  # OpenAI's bounds: keys, a key's length, a value's length
_MAX_METADATA_KEY = 64
_MAX_METADATA_VALUE = 512


def _invalid_type(param: str, expected: str) -> InvalidInput:
    return InvalidInput(f"Invalid type for '{param}': expected {expected}.", param=param)


def _check_metadata(metadata: object) -> None:
    if not isinstance(metadata, dict):
        raise _invalid_type("metadata", "an object of string values")
    if len(metadata) > _MAX_METADATA:
        raise InvalidInput(f"Invalid 'metadata': at most {_MAX_METADATA} keys.",
                           param="metadata")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise _invalid_type("metadata", "an object of string values")
        if len(key) > _MAX_METADATA_KEY or len(value) > _MAX_METADATA_VALUE:
            raise InvalidInput(f"Invalid 'metadata': keys are at most {_MAX_METADATA_KEY} "
                               f"characters, values at most {_MAX_METADATA_VALUE}.",
                               param="metadata")


def _check_text(text: object) -> None:
    if not isinstance(text, dict):
        raise _invalid_type("text", "an object")
    verbosity = text.get("verbosity")
    if verbosity is not None and not _is(verbosity, _VERBOSITY):
        raise InvalidInput("Invalid 'text.verbosity': expected low, medium or high.",
                           param="text.verbosity")
    fmt = text.get("format")
    if fmt is None:
        return
    if not isinstance(fmt, dict):
        raise _invalid_type("text.format", "an object")
    kind = fmt.get("type")
    if kind == "json_schema":
        if not isinstance(fmt.get("name"), str) or not _SCHEMA_NAME.fullmatch(fmt["name"]):
            raise InvalidInput("Invalid 'text.format.name': expected 1 to 64 letters, digits, "
                               "underscores or dashes.", param="text.format.name")
        if not isinstance(fmt.get("schema"), dict):
            raise _invalid_type("text.format.schema", "an object")
        if fmt.get("strict") is not None and not isinstance(fmt["strict"], bool):
            raise _invalid_type("text.format.strict", "a boolean")
        if fmt.get("description") is not None and not isinstance(fmt["description"], str):
            raise _invalid_type("text.format.description", "a string")
    elif kind not in ("text", "json_object"):
        raise InvalidInput(f"text.format of {_named(kind)} is not supported: text, "
                           "json_object or json_schema.", param="text.format.type")


def _check_tool_choice(choice: object) -> None:
    if _is(choice, _TOOL_CHOICES):
        return
    if not (isinstance(choice, dict) and choice.get("type") == "function"
            and isinstance(choice.get("name"), str) and choice["name"]):
        raise InvalidInput("`tool_choice` must be none, auto, required or "
                           "{\"type\": \"function\", \"name\": ...}.", param="tool_choice")


def check_params(parsed: dict[str, Any]) -> None:
    """A request's parameters, by type and range, before anything is done with them: a 400
    naming the first wrong one (never quoting its value)."""
    for name in _STRING_PARAMS:
        if parsed.get(name) is not None and not isinstance(parsed[name], str):
            raise _invalid_type(name, "a string")
    for name in _BOOL_PARAMS:
        if parsed.get(name) is not None and not isinstance(parsed[name], bool):
            raise _invalid_type(name, "a boolean")
    for name, low, high in _NUMBER_PARAMS:
        value = parsed.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _invalid_type(name, "a number")
        if not low <= value <= high:
            raise InvalidInput(f"Invalid '{name}': expected a value from {low:g} to "
                               f"{high:g}.", param=name)
    for name, low_int, high_int in _INT_PARAMS:
        value = parsed.get(name)
        if value is None:
            continue
        if type(value) is not int:
            raise _invalid_type(name, "an integer")
        if not low_int <= value <= high_int:
            raise InvalidInput(f"Invalid '{name}': expected an integer from {low_int} to "
                               f"{high_int}.", param=name)
    tier = parsed.get("service_tier")
    if tier is not None and not _is(tier, _SERVICE_TIERS):
        raise InvalidInput("Invalid 'service_tier': expected one of "
                           f"{', '.join(sorted(_SERVICE_TIERS))}.", param="service_tier")
    if parsed.get("metadata") is not None:
        _check_metadata(parsed["metadata"])
    if parsed.get("text") is not None:
        _check_text(parsed["text"])
    if parsed.get("tool_choice") is not None:
        _check_tool_choice(parsed["tool_choice"])
    if parsed.get("tools") is not None:
        _chat_tools(parsed["tools"])


# -- input ---------------------------------------------------------------------------------


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _parts(content: object, role: str) -> list[dict[str, Any]]:
    """A message's content as Responses parts (input_text / input_image / output_text)."""
    if isinstance(content, str):
        return [output_text_part(content) if role == "assistant"
                else {"type": "input_text", "text": content}]
    if not isinstance(content, list):
        raise InvalidInput("A message's `content` must be a string or a list of parts.",
                           param="input")
    parts: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict):
            raise InvalidInput("Each content part must be an object.", param="input")
        kind = part.get("type")
        if _is(kind, _TEXT_PARTS) and isinstance(part.get("text"), str):
            parts.append(output_text_part(part["text"]) if role == "assistant"
                         else {"type": "input_text", "text": part["text"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            if role != "user":
                raise InvalidInput("Only user messages may hold images.", param="input")
            detail = part.get("detail")
            if detail is not None and not _is(detail, _IMAGE_DETAILS):
                raise InvalidInput("An input_image's `detail` must be auto, low or high.",
                                   param="input")
            parts.append({"type": "input_image", "image_url": part["image_url"],
                          "detail": detail or "auto"})
        else:
            raise InvalidInput(f"Content parts of {_named(kind)} are not supported here; use "
                               "input_text, output_text or input_image with an image_url.",
                               param="input")
    return parts


def _chat_content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Responses parts as chat content: plain text (the form every chat upstream takes)
    unless an image needs the list form."""
    if not any(part["type"] == "input_image" for part in parts):
        return "".join(part["text"] for part in parts)
    chat: list[dict[str, Any]] = []
    for part in parts:
        if part["type"] == "input_image":
            image = {"url": part["image_url"]}
            if part["detail"] != "auto":
                image["detail"] = part["detail"]
            chat.append({"type": "image_url", "image_url": image})
        else:
            chat.append({"type": "text", "text": part["text"]})
    return chat


def _string(item: dict[str, Any], key: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise InvalidInput(f"A `{item.get('type')}` input item needs a string `{key}`.",
                           param="input")
    return value


def _tool_output(output: object) -> str:
    """A function_call_output's `output` (a string or text parts) as a chat tool message's
    content."""
    if isinstance(output, str):
        return output
    if isinstance(output, list) and all(
            isinstance(part, dict) and _is(part.get("type"), _TEXT_PARTS)
            and isinstance(part.get("text"), str) for part in output):
        return "".join(part["text"] for part in output)
    raise InvalidInput("A `function_call_output` item's `output` must be a string or a list "
                       "of input_text parts.", param="input")


def message_item(role: str, parts: list[dict[str, Any]], item_id: str | None = None
                 ) -> dict[str, Any]:
    return {"type": "message", "id": item_id or new_id("msg_"), "role": role,
            "status": "completed", "content": parts}


def function_call_item(call_id: str, name: str, arguments: str, *,
                       item_id: str | None = None, status: str = "completed"
                       ) -> dict[str, Any]:
    return {"type": "function_call", "id": item_id or new_id("fc_"), "call_id": call_id,
            "name": name, "arguments": arguments, "status": status}


def _input_items(value: object) -> list[dict[str, Any]]:
    """`input` as Responses items, each with its id and status (as `input_items` lists them)."""
    if isinstance(value, str):
        return [message_item("user", [{"type": "input_text", "text": value}])]
    if not isinstance(value, list) or not value:
        raise InvalidInput("`input` must be a string or a non-empty list of items.",
                           param="input")
    items: list[dict[str, Any]] = []
    for item in value:
        if not isinstance(item, dict):
            raise InvalidInput("Each `input` item must be an object.", param="input")
        kind = item.get("type", "message")
        given_id = item.get("id") if isinstance(item.get("id"), str) else None
        if kind == "message" and _is(item.get("role"), _INPUT_ROLES):
            role = item["role"]
            items.append(message_item(role, _parts(item.get("content"), role),
                                      given_id if role == "assistant" else None))
        elif kind == "message":
            raise InvalidInput("A message's `role` must be user, assistant, system or "
                               "developer.", param="input")
        elif kind == "function_call":
            items.append(function_call_item(_string(item, "call_id"), _string(item, "name"),
                                            _string(item, "arguments"), item_id=given_id))
        elif kind == "function_call_output":
            items.append({"type": "function_call_output", "id": given_id or new_id("fco_"),
                          "call_id": _string(item, "call_id"),
                          "output": _tool_output(item.get("output")), "status": "completed"})
        else:
            raise InvalidInput(
                f"Input items of {_named(kind)} are not supported by this gateway's Responses "
                "API; it takes messages (role user, assistant, system or developer), "
                "function_call and function_call_output items.", param="input")
    return items


def assistant_message(text: str | None, tool_calls: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat assistant message of an answer: its text and its calls."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def _chat_tool_call(item: dict[str, Any]) -> dict[str, Any]:
    return {"id": item["call_id"], "type": "function",
            "function": {"name": item["name"], "arguments": item["arguments"]}}


def _chat_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses items as chat messages. A `function_call` joins the assistant message just
    before it (chat keeps a turn's text and calls in one message); each output is a `tool`
    message."""
    messages: list[dict[str, Any]] = []
    for item in items:
        kind = item["type"]
        if kind == "message":
            role = "system" if item["role"] == "developer" else item["role"]
            messages.append({"role": role, "content": _chat_content(item["content"])})
        elif kind == "function_call":
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(_chat_tool_call(item))
                if last["content"] == "":
                    last["content"] = None
            else:
                messages.append(assistant_message(None, [_chat_tool_call(item)]))
        else:  # function_call_output
            messages.append({"role": "tool", "tool_call_id": item["call_id"],
                             "content": item["output"]})
    return messages


def _chat_tools(tools: object) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise InvalidInput("`tools` must be a list.", param="tools")
    chat: list[dict[str, Any]] = []
    for tool in tools:
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise InvalidInput(f"Tools of {_named(kind)} are not supported by this gateway: the "
                               "in-region models take function tools only.", param="tools")
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise InvalidInput("A function tool needs a `name`.", param="tools")
        for key, kind, expected in (("description", str, "a string"),
                                    ("parameters", dict, "an object"),
                                    ("strict", bool, "a boolean")):
            if tool.get(key) is not None and not isinstance(tool[key], kind):
                raise _invalid_type(f"tools.{key}", expected)
        function = {key: tool[key] for key in ("name", "description", "parameters", "strict")
                    if tool.get(key) is not None}
        chat.append({"type": "function", "function": function})
    return chat


def _chat_tool_choice(choice: object) -> object:
    if choice in ("none", "auto", "required"):
        return choice
    if (isinstance(choice, dict) and choice.get("type") == "function"
            and isinstance(choice.get("name"), str)):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidInput("`tool_choice` must be none, auto, required or "
                       "{\"type\": \"function\", \"name\": ...}.", param="tool_choice")


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
    raise InvalidInput(f"text.format of {_named(fmt['type'])} is not supported.", param="text")


def to_chat_request(parsed: dict[str, Any], history: list[dict[str, Any]]) -> ChatRequest:
    """The chat request of a Responses request continuing `history` (chat messages)."""
    items = _input_items(parsed.get("input"))
    new = _chat_messages(items)
    conversation = [*history, *new]
    messages = list(conversation)
    instructions = parsed.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.insert(0, {"role": "system", "content": instructions})
    chat: dict[str, Any] = {"model": parsed["model"], "messages": messages}
    for source, target in _PASSED_ON:
        if parsed.get(source) is not None:
            chat[target] = parsed[source]
    if parsed.get("tools"):
        chat["tools"] = _chat_tools(parsed["tools"])
        if parsed.get("tool_choice") is not None:
            chat["tool_choice"] = _chat_tool_choice(parsed["tool_choice"])
        if isinstance(parsed.get("parallel_tool_calls"), bool):
            chat["parallel_tool_calls"] = parsed["parallel_tool_calls"]
    elif parsed.get("tool_choice") not in (None, "none", "auto"):
        raise InvalidInput("`tool_choice` names a tool, and the request has no `tools`.",
                           param="tool_choice")
    response_format = _response_format(parsed.get("text"))
    if response_format is not None:
        chat["response_format"] = response_format
    has_image = any(part["type"] == "input_image" for item in items
                    if item["type"] == "message" for part in item["content"])
    return ChatRequest(chat, conversation, has_image, items)


# -- output --------------------------------------------------------------------------------


def output_from_chat(message: dict[str, Any], finish_reason: object
                     ) -> tuple[list[dict[str, Any]], str | None, dict[str, Any]]:
    """(output items, why it is incomplete or None, the assistant message to keep) of a chat
    answer's message."""
    text = message.get("content")
    text = text if isinstance(text, str) else ""
    incomplete = _CHAT_FINISH.get(finish_reason) if isinstance(finish_reason, str) else None
    status = "incomplete" if incomplete else "completed"
    calls = [call for call in message.get("tool_calls") or ()
             if isinstance(call, dict) and isinstance(call.get("function"), dict)]
    output: list[dict[str, Any]] = []
    if text or not calls:
        output.append({**message_item("assistant", [output_text_part(text)]),
                       "status": status})
    kept_calls = []
    for call in calls:
        function = call["function"]
        call_id: str = call["id"] if isinstance(call.get("id"), str) else new_id("call_")
        name: str = function["name"] if isinstance(function.get("name"), str) else ""
        arguments = function.get("arguments")
        arguments = arguments if isinstance(arguments, str) else ""
        item = function_call_item(call_id, name, arguments, status=status)
        output.append(item)
        kept_calls.append(_chat_tool_call(item))
    return output, incomplete, assistant_message(text or (None if calls else ""), kept_calls)


def usage_object(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _echo_tools(tools: object) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        return []
    return [{"type": "function", "name": tool["name"],
             "description": tool.get("description"), "parameters": tool.get("parameters"),
             "strict": tool.get("strict")}
            for tool in tools if isinstance(tool, dict) and tool.get("type") == "function"]


@dataclass(slots=True)
class ResponseDraft:
    """The Response object of one request, at any point of its life."""

    parsed: dict[str, Any]
    stored: bool
    background: bool = False
    id: str = field(default_factory=lambda: new_id("resp_"))
    created_at: int = field(default_factory=lambda: int(time.time()))
    model: str = ""

    def __post_init__(self) -> None:
        if not self.model:
            self.model = str(self.parsed.get("model") or "")

    def snapshot(self, status: str, output: list[dict[str, Any]] | None = None, *,
                 usage: dict[str, Any] | None = None, incomplete: str | None = None,
                 error: str | None = None) -> dict[str, Any]:
        parsed = self.parsed
        text = parsed.get("text") if isinstance(parsed.get("text"), dict) else None
        response: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": self.background,
            "error": None if error is None else {"code": "server_error", "message": error},
            "incomplete_details": None if incomplete is None else {"reason": incomplete},
            "instructions": parsed.get("instructions"),
            "max_output_tokens": parsed.get("max_output_tokens"),
            "model": self.model,
            "output": output or [],
            "parallel_tool_calls": parsed.get("parallel_tool_calls") is not False,
            "previous_response_id": parsed.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "store": self.stored,
            "temperature": parsed.get("temperature"),
            "text": {"format": {"type": "text"}, **(text or {})},
            "tool_choice": parsed.get("tool_choice") or "auto",
            "tools": _echo_tools(parsed.get("tools")),
            "top_p": parsed.get("top_p"),
            "truncation": "disabled",
            "usage": usage,
            "metadata": parsed.get("metadata") or {},
        }
        if status == "completed":
            response["completed_at"] = int(time.time())
        for key in _ECHOED_IF_GIVEN:
            if parsed.get(key) is not None:
                response[key] = parsed[key]
        return response
