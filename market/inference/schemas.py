"""Completion requests as buyers' OpenAI clients send them.

The market reads only what it needs (model, stream, token limits, the prompt's size, and the
`provider` routing object) and passes every other OpenAI or vLLM parameter through to the
engine unchanged, so sampling, stop, seed, logprobs, response_format and tools behave exactly
as vLLM defines them.

As in OpenAI's API, `null` for any optional parameter means "use the default": the market's
own fields take their defaults, and other parameters that are null are left out of the body
sent on to the engine. A value of the wrong type is refused (400 naming the parameter).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)

from market.config import MEDIA_PART_TOKEN_BOUND
from market.routing.schemas import ProviderPreferences, null_is

DEFAULT_MAX_TOKENS = 1_024
MAX_TOKENS_LIMIT = 131_072
#: Parameters only the market may set on the engine request.
RESERVED = frozenset({"return_token_ids"})


def _no_preferences(value: Any) -> Any:
    """`"provider": null` routes as an absent `provider` does."""
    return ProviderPreferences() if value is None else value


class StreamOptions(BaseModel):
    """OpenAI's `stream_options`."""

    model_config = ConfigDict(extra="allow")

    include_usage: Annotated[StrictBool, null_is(False)] = False


class CompletionRequestBase(BaseModel):
    """What both completion routes share; unknown fields are kept for the engine."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    stream: Annotated[StrictBool, null_is(False)] = False
    stream_options: StreamOptions | None = None
    max_tokens: StrictInt | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    n: Annotated[StrictInt, null_is(1)] = Field(default=1, ge=1)
    provider: Annotated[
        ProviderPreferences,
        BeforeValidator(_no_preferences, json_schema_input_type=ProviderPreferences | None),
    ] = Field(default_factory=ProviderPreferences)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError(
                f"only n=1 is served (got {n}): each choice is its own job, signed and charged "
                "by its provider; send n requests"
            )
        return n

    @model_validator(mode="after")
    def _no_reserved(self) -> CompletionRequestBase:
        reserved = RESERVED & set(self.model_extra or {})
        if reserved:
            raise ValueError(f"parameter {sorted(reserved)[0]!r} is set by the market")
        return self

    @model_validator(mode="after")
    def _valid_unicode(self) -> CompletionRequestBase:
        """JSON may escape half of a UTF-16 surrogate pair (`\\ud800`), which no engine can
        take as UTF-8: refused here, not failed on the way to the provider."""
        try:
            json.dumps(self.engine_body(), ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise ValueError(
                "the request holds text that is not valid Unicode (a lone UTF-16 surrogate "
                "such as \\ud800, often a string cut inside an emoji)"
            ) from None
        return self

    @property
    def explicit_limit(self) -> tuple[str, int | None]:
        """The parameter that sets the completion limit, and its value if the request set
        one (routing skips offers whose context cannot hold it)."""
        if self.max_completion_tokens is not None:
            return "max_completion_tokens", self.max_completion_tokens
        return "max_tokens", self.max_tokens

    @property
    def completion_limit(self) -> int:
        """The most completion tokens this request may produce (the hold is sized on it):
        OpenAI's newer `max_completion_tokens` wins over `max_tokens`."""
        return self.max_completion_tokens or self.max_tokens or DEFAULT_MAX_TOKENS

    def prompt_bound(self, media_part_tokens: int = MEDIA_PART_TOKEN_BOUND) -> int:
        """An upper bound on prompt tokens: a byte-level tokenizer makes at most one per byte.

        `media_part_tokens`: the bound of a chat content part that is not text."""
        raise NotImplementedError

    def engine_body(self) -> dict[str, Any]:
        """The body sent on to the engine: the buyer's parameters minus routing, plus limits."""
        body = self.model_dump(
            exclude={"provider", "max_completion_tokens"}, exclude_none=True, by_alias=True
        )
        body["max_tokens"] = self.completion_limit
        if self.stream:
            body["stream_options"] = {**body.get("stream_options", {}), "include_usage": True}
        return body


class ChatCompletionRequest(CompletionRequestBase):
    """`POST /v1/chat/completions`."""

    messages: list[dict[str, Any]] = Field(min_length=1)
    include_reasoning: StrictBool | None = None

    @field_validator("include_reasoning")
    @classmethod
    def _reasoning_included(cls, include: bool | None) -> bool | None:
        if include is False:
            raise ValueError(
                "include_reasoning: false is not served: vLLM then leaves out the token ids "
                "the provider's receipt counts, so the answer could not be signed or charged"
            )
        return include

    def prompt_bound(self, media_part_tokens: int = MEDIA_PART_TOKEN_BOUND) -> int:
        """UTF-8 bytes of the messages and tools, plus template overhead per message; each
        content part whose `type` is not `text` counts `media_part_tokens` instead of its
        bytes (left out of the JSON measured)."""
        messages, media = self.messages, 0
        for message in messages:
            if type(message.get("content")) is list:  # else plain text: the common case
                messages, media = _without_media(messages)
                break
        payload = {"messages": messages, "tools": (self.model_extra or {}).get("tools")}
        size = len(json.dumps(payload, ensure_ascii=False).encode())
        return size + 16 * len(messages) + media * media_part_tokens


def _without_media(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The messages with only the text parts of their `content` lists, and how many parts
    were left out (a part without a `type` too: vLLM reads `{"image_url": ...}` as an image)."""
    kept, media = [], 0
    for message in messages:
        content = message.get("content")
        if type(content) is list:
            text = [p for p in content if not isinstance(p, dict) or p.get("type") == "text"]
            if len(text) < len(content):
                media += len(content) - len(text)
                message = {**message, "content": text}
        kept.append(message)
    return kept, media


TokenIds = list[Annotated[StrictInt, Field(ge=0)]]
"""A prompt given as token ids."""
_PROMPT_FORMS = "a string, a list of token ids, or a list holding one of these"


def _is_token_ids(value: Any) -> bool:
    return type(value) is list and all(type(i) is int and i >= 0 for i in value)


def _single(prompt: Any) -> Any:
    """The one prompt of any of OpenAI's four forms (a list of prompts must hold one)."""
    if type(prompt) is list and prompt and not _is_token_ids(prompt):
        if not all(type(p) is str or _is_token_ids(p) for p in prompt):
            raise ValueError(f"must be {_PROMPT_FORMS}")
        if len(prompt) > 1:
            raise ValueError(
                f"{len(prompt)} prompts in one request: one is served per request (each is "
                "its own job, signed and charged by its provider); send one request per prompt"
            )
        return prompt[0]
    return prompt


def _one_prompt(prompt: Any) -> Any:
    """Refuses all but one non-empty prompt, with a message that says why (before the
    union's own errors, which would name each form it tried); the prompt passes unchanged."""
    single = _single(prompt)
    if type(single) is not str and not _is_token_ids(single):
        raise ValueError(f"must be {_PROMPT_FORMS}")
    if not single:
        raise ValueError("the prompt is empty")
    return prompt


class CompletionRequest(CompletionRequestBase):
    """`POST /v1/completions`: one prompt, as text or token ids, alone or as the only item of
    a list (OpenAI's batch forms, with one prompt)."""

    prompt: Annotated[str | TokenIds | list[str] | list[TokenIds], BeforeValidator(_one_prompt)]
    echo: StrictBool | None = None

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, echo: bool | None) -> bool | None:
        if echo:
            raise ValueError(
                "echo is not served: the provider asks the engine for the token ids its "
                "receipt counts, and with them vLLM echoes no prompt text"
            )
        return echo

    def prompt_bound(self, media_part_tokens: int = MEDIA_PART_TOKEN_BOUND) -> int:
        """The prompt's UTF-8 bytes, or its token ids, plus a small allowance for special
        tokens."""
        prompt = _single(self.prompt)
        return (len(prompt.encode()) if isinstance(prompt, str) else len(prompt)) + 8
