"""What a model's replies cost, in USD: `MODEL_PRICES` first, then a maintained table.

The maintained table is the `genai-prices` package (Pydantic's): prices of the hosted
models of the main providers, kept up to date by its maintainers and released often, and
read offline from the installed package (its network update is never used). A model is
looked up by the name an audit asks for (`OPENAI_MODEL`, `ALLOWED_MODELS`), which it
matches with or without a dated suffix (`gpt-4o-mini`, `gpt-4o-mini-2024-07-18`).
`MODEL_PRICES` overrides it, and prices what it does not know: self-hosted and
fine-tuned models. A model neither knows has no price: its audits' `cost_usd` is null.

Decisions:
- Each reply is priced on its own, then the costs are added: a price may depend on the
  size of one request (some models' prices rise past 200,000 prompt tokens).
- Cached input tokens (`prompt_tokens_details.cached_tokens`, part of the prompt's) are
  priced at the cached-input price where there is one, else at the input price.
- Amounts are exact decimals, never floats: a cost matches the prices to the last digit.
- A model's price is resolved once per process (prices change every few months; a
  worker started after a change uses the new one). Most prices are linear in each kind
  of token: they are read off the package once, as four coefficients (the package
  computes a reply in about 0.1 ms, a worker's CPU per audit is about 2 ms), and only
  tiered prices go through the package for every reply.
"""

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from shared.config import Settings, TokenPrices
from shared.llm.usage import ReplyTokens, TokenUsage

MILLION = Decimal(1_000_000)
ZERO = Decimal(0)


class Price(Protocol):
    def cost(self, reply: ReplyTokens) -> Decimal:
        """USD that one answered call cost."""
        ...


@dataclass(frozen=True, slots=True)
class LinearPrice:
    """USD per million tokens of each kind, and per request."""

    input: Decimal
    cached_input: Decimal
    output: Decimal
    request: Decimal = ZERO

    @classmethod
    def of(cls, prices: TokenPrices) -> "LinearPrice":
        cached = prices.input if prices.cached_input is None else prices.cached_input
        return cls(input=prices.input, cached_input=cached, output=prices.output)

    def cost(self, reply: ReplyTokens) -> Decimal:
        uncached = reply.prompt_tokens - reply.cached_tokens
        per_million = (
            uncached * self.input
            + reply.cached_tokens * self.cached_input
            + reply.completion_tokens * self.output
        )
        return self.request + per_million / MILLION


@dataclass(frozen=True, slots=True)
class TieredPrice:
    """A price of the maintained table that depends on a request's size."""

    model_price: Any  # genai_prices.types.ModelPrice

    def cost(self, reply: ReplyTokens) -> Decimal:
        total: Decimal = self.model_price.calc_price(_usage(reply))["total_price"]
        return total


def _usage(reply: ReplyTokens) -> Any:
    from genai_prices import Usage

    return Usage(
        input_tokens=reply.prompt_tokens,
        cache_read_tokens=reply.cached_tokens,
        output_tokens=reply.completion_tokens,
    )


@functools.cache
def maintained_price(model: str) -> Price | None:
    """The package's price of `model` today, or None when it does not know the model.

    The package is imported on the first call: its table takes a second to load.
    """
    from genai_prices import calc_price

    try:
        model_price = calc_price(_usage(ReplyTokens(0, 0)), model).model_price
    except LookupError:
        return None
    return _linear(model_price) or TieredPrice(model_price)


def _linear(model_price: Any) -> LinearPrice | None:
    """The price as coefficients, read off the package's own arithmetic; None if tiered."""
    from genai_prices.types import TieredPrices

    if any(isinstance(value, TieredPrices) for value in vars(model_price).values()):
        return None
    at = TieredPrice(model_price).cost
    base = at(ReplyTokens(0, 0))
    million = int(MILLION)
    return LinearPrice(
        input=at(ReplyTokens(million, 0)) - base,
        cached_input=at(ReplyTokens(million, 0, million)) - base,
        output=at(ReplyTokens(0, million)) - base,
        request=base,
    )


class PriceTable:
    """The prices of a deployment's models; one per process."""

    def __init__(
        self,
        overrides: Mapping[str, TokenPrices],
        *,
        maintained: Callable[[str], Price | None] = maintained_price,
    ) -> None:
        self._maintained = maintained
        self._prices: dict[str, Price | None] = {
            model: LinearPrice.of(prices) for model, prices in overrides.items()
        }

    @classmethod
    def of(cls, settings: Settings) -> "PriceTable":
        return cls(settings.model_prices)

    def warm(self, models: Iterable[str]) -> None:
        """Resolve these models' prices now (the first lookup loads the maintained table)."""
        for model in models:
            self.price(model)

    def price(self, model: str) -> Price | None:
        if model not in self._prices:
            self._prices[model] = self._maintained(model)
        return self._prices[model]

    def knows(self, model: str) -> bool:
        return self.price(model) is not None

    def cost(self, model: str, usage: TokenUsage) -> Decimal | None:
        """USD the replies cost; None when the model has no price."""
        price = self.price(model)
        if price is None:
            return None
        return sum((price.cost(reply) for reply in usage.replies), ZERO)
