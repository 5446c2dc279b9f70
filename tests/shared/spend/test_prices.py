"""What replies cost: MODEL_PRICES to the last digit, the maintained table as its package
computes it, and no price for a model neither knows."""

from decimal import Decimal

import pytest
from genai_prices import Usage, calc_price

from shared.config import Settings, TokenPrices
from shared.llm.usage import ReplyTokens, TokenUsage
from shared.spend.prices import PriceTable, maintained_price


def usage(*replies: tuple[int, int, int]) -> TokenUsage:
    return TokenUsage(tuple(ReplyTokens(*reply) for reply in replies))


def table(model_prices: str) -> PriceTable:
    return PriceTable.of(Settings(model_prices=model_prices))


def package_cost(model: str, reply: tuple[int, int, int]) -> Decimal:
    prompt, completion, cached = reply
    used = Usage(input_tokens=prompt, cache_read_tokens=cached, output_tokens=completion)
    total: Decimal = calc_price(used, model).total_price
    return total


def test_a_cost_is_the_tokens_at_model_prices_exactly() -> None:
    prices = table("my-llama=0.15:0.60")

    cost = prices.cost("my-llama", usage((1_234, 567, 0)))

    # 1,234 * 0.15 + 567 * 0.60 micro-dollars, to the last digit.
    assert cost == Decimal("0.0001851") + Decimal("0.0003402")
    assert cost == Decimal("0.0005253")


def test_the_replies_of_an_audit_are_added_up() -> None:
    prices = table("my-llama=0.15:0.60")
    first, corrective = (1_000, 200, 0), (1_100, 300, 0)

    cost = prices.cost("my-llama", usage(first, corrective))

    assert cost == Decimal("0.00015") + Decimal("0.00012") + Decimal("0.000165") + Decimal(
        "0.00018"
    )


def test_cached_tokens_are_priced_at_the_cached_input_price() -> None:
    prices = table("my-llama=1:2:0.25")

    cost = prices.cost("my-llama", usage((1_000_000, 0, 400_000)))

    assert cost == Decimal("0.6") + Decimal("0.1")  # 600,000 at 1, 400,000 at 0.25


def test_cached_tokens_cost_the_input_price_when_model_prices_gives_none() -> None:
    prices = table("my-llama=1:2")

    assert prices.cost("my-llama", usage((1_000_000, 0, 400_000))) == Decimal(1)


def test_model_prices_override_the_maintained_table() -> None:
    prices = table("gpt-4o-mini=1:1")

    assert prices.cost("gpt-4o-mini", usage((1_000_000, 0, 0))) == Decimal(1)


def test_a_model_neither_knows_has_no_price() -> None:
    prices = table("my-llama=1:1")

    assert prices.cost("auditq-simulator", usage((100, 10, 0))) is None
    assert not prices.knows("auditq-simulator")
    assert maintained_price("auditq-simulator") is None


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4o", "gpt-4o-mini-2024-07-18"])
@pytest.mark.parametrize("reply", [(12_345, 678, 0), (12_345, 678, 10_240), (1, 0, 0)])
def test_a_model_of_the_maintained_table_costs_what_the_package_says(
    model: str, reply: tuple[int, int, int]
) -> None:
    prices = table("")

    assert prices.cost(model, usage(reply)) == package_cost(model, reply)


def test_the_maintained_table_knows_gpt_4o_minis_published_prices() -> None:
    """0.15 and 0.60 USD per million tokens, 0.075 cached (OpenAI's price list)."""
    prices = table("")

    assert prices.cost("gpt-4o-mini", usage((1_000_000, 1_000_000, 0))) == Decimal("0.75")
    assert prices.cost("gpt-4o-mini", usage((1_000_000, 0, 1_000_000))) == Decimal("0.075")
    # The same as MODEL_PRICES's example says.
    example = table("gpt-4o-mini=0.15:0.60:0.075")
    reply = (8_765, 432, 1_024)
    assert prices.cost("gpt-4o-mini", usage(reply)) == example.cost("gpt-4o-mini", usage(reply))


@pytest.mark.parametrize("prompt", [150_000, 250_000])
def test_a_tiered_price_is_computed_per_reply_by_the_package(prompt: int) -> None:
    """Gemini 2.5 Pro costs more past 200,000 prompt tokens: two replies of 150,000 each
    cost twice one of them, not one of 300,000."""
    prices = table("")
    reply = (prompt, 1_000, 0)

    assert prices.cost("gemini-2.5-pro", usage(reply)) == package_cost("gemini-2.5-pro", reply)
    assert prices.cost("gemini-2.5-pro", usage(reply, reply)) == 2 * package_cost(
        "gemini-2.5-pro", reply
    )


def test_model_prices_are_exact_decimals() -> None:
    settings = Settings(model_prices="gpt-4o-mini=0.15:0.60, my/model=v2=0.1:0.2:0.05")

    assert settings.model_prices == {
        "gpt-4o-mini": TokenPrices(Decimal("0.15"), Decimal("0.60")),
        "my/model=v2": TokenPrices(Decimal("0.1"), Decimal("0.2"), Decimal("0.05")),
    }


@pytest.mark.parametrize(
    "value", ["gpt-4o-mini=0.15", "gpt-4o-mini=a:b", "=1:2", "m=1:-2", "m=1:2:3:4", "m=1:2,m=1:2"]
)
def test_malformed_model_prices_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="model_prices"):
        Settings(model_prices=value)
