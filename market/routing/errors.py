"""Refusals that routing decides alone, before any provider is tried."""

from __future__ import annotations

from market.errors import InvalidRequestError


class CompletionLimitTooLargeError(InvalidRequestError):
    """The request's explicit completion limit exceeds the context of every offer of its
    model: each engine would refuse it (vLLM: "max_tokens=N cannot be greater than
    max_model_len=M"). 400 in OpenAI's envelope, worded as OpenAI words a `max_tokens` past
    a model's limit, naming the parameter and the longest context on offer."""

    status_code = 400
    code = "invalid_value"

    def __init__(self, model: str, param: str, requested: int, longest: int) -> None:
        super().__init__(
            f"{param} is too large: {requested}. The providers of `{model}` on this market "
            f"serve at most {longest} tokens of context (prompt and completion together), "
            f"whereas you provided {requested}."
        )
        self.param = param
        self.requested = requested
        self.longest = longest
