"""What an attempt's answered calls add to its audit's usage and to the spends it counts in."""

from dataclasses import dataclass
from decimal import Decimal

from shared.llm.usage import TokenUsage
from shared.spend.prices import PriceTable


@dataclass(frozen=True, slots=True)
class Charge:
    """Tokens and USD to add; `cost_usd` None: the model has no price."""

    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal | None

    @classmethod
    def of(cls, usage: TokenUsage | None, *, model: str, prices: PriceTable) -> "Charge | None":
        """The charge of these replies of `model`; None when no call was answered."""
        if usage is None or not usage.replies:
            return None
        return cls(usage.prompt_tokens, usage.completion_tokens, prices.cost(model, usage))
