"""What the model calls of an attempt were billed for: the tokens of each answered call.

Kept reply by reply rather than summed: a price may depend on the size of one request
(tiered prices), so each reply is priced on its own (shared/spend/prices.py).
"""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ReplyTokens:
    """The tokens one answered call reported; `cached_tokens` are part of `prompt_tokens`
    (the provider's `prompt_tokens_details.cached_tokens`)."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """The replies of one or more answered calls, in the order they came."""

    replies: tuple[ReplyTokens, ...] = ()

    def __add__(self, other: "TokenUsage") -> "TokenUsage":
        return TokenUsage(self.replies + other.replies)

    @property
    def calls(self) -> int:
        return len(self.replies)

    @property
    def prompt_tokens(self) -> int:
        return sum(reply.prompt_tokens for reply in self.replies)

    @property
    def completion_tokens(self) -> int:
        return sum(reply.completion_tokens for reply in self.replies)

    @property
    def cached_tokens(self) -> int:
        return sum(reply.cached_tokens for reply in self.replies)


NO_USAGE = TokenUsage()
