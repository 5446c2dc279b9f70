"""Amounts of USD as clients read them."""

from decimal import Decimal


def usd(amount: Decimal | None) -> float | None:
    """An exact amount as a JSON number: a float keeps 15 significant digits, to the
    micro-dollar below a billion dollars."""
    return None if amount is None else float(amount)


def shown(amount: Decimal) -> str:
    """For people: `12.50 USD`, and every digit of an amount under a dollar (`0.000123 USD`)."""
    digits = f"{amount:.2f}" if amount >= 1 or amount == 0 else f"{amount.normalize():f}"
    return f"{digits} USD"
