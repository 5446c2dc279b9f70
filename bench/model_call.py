"""The model call's CPU in the worker, and the worst reply's validation.

1. CPU per call, in this process, against the simulator (its own process, no latency, no
   faults), `IN_FLIGHT` calls at a time through one `create_client` client: the SDK's
   typed `chat.completions.create`, then the fields auditq reads, against the shortcut
   `shared.llm.client` takes (the SDK's `post` with the body as JSON, and only those
   fields parsed from the reply). Rounds alternate the two; the medians are reported.
   The whole `audit_content` (the call, validation of the reply, its findings) too.
2. Validation of the worst reply `shared.llm.schemas.REPLY_LIMITS` allows, against 100,000
   characters of content built to make substring search slow (`("a " * 50000)`, quotes that
   miss by their last character), CPU of one `validate_reply`.
"""

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from openai import AsyncOpenAI

from bench.common import Run, stack, start_simulator
from bench.results import Section
from shared.config import Settings
from shared.llm.client import _ask, audit_content, create_client
from shared.llm.prompt import build_messages, response_format
from shared.llm.sampling import Sampling
from shared.llm.schemas import REPLY_LIMITS, CriterionText, validate_reply

IN_FLIGHT = 100
MODEL = "gpt-4o-mini"
CRITERIA = [CriterionText(id=f"c{i}", description=f"Criterion {i} is met.") for i in range(5)]
CONTENT = " ".join(f"Sentence {i} of a product page, about materials." for i in range(100))
HOSTILE_CONTENT = ("a " * 50000)[:100000]


Call = Callable[[AsyncOpenAI], Awaitable[Any]]
_MESSAGES = build_messages(subject="Page", content=CONTENT, criteria=CRITERIA)
_SCHEMA = response_format([c.id for c in CRITERIA])


async def typed_call(client: AsyncOpenAI) -> tuple[str | None, int, str | None]:
    """The typed API: `create`, then the fields auditq reads."""
    completion = await client.chat.completions.create(
        model=MODEL, messages=_MESSAGES, response_format=_SCHEMA
    )
    usage = completion.usage
    text = completion.choices[0].message.content
    return text, usage.prompt_tokens if usage else 0, completion._request_id


async def post_call(client: AsyncOpenAI) -> Any:
    """What shared.llm.client does: the SDK's `post`, the reply's fields parsed."""
    return await _ask(client, model=MODEL, messages=_MESSAGES, schema=_SCHEMA, sampled={})


async def whole_audit(client: AsyncOpenAI) -> Any:
    return await audit_content(
        client,
        model=MODEL,
        subject="Page",
        content=CONTENT,
        criteria=CRITERIA,
        sampling=Sampling(),
    )


async def _cpu_per_call_ms(client: AsyncOpenAI, call: Call, calls: int) -> float:
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def one() -> None:
        async with slots:
            await call(client)

    begun = time.process_time()
    await asyncio.gather(*(one() for _ in range(calls)))
    return (time.process_time() - begun) * 1000 / calls


async def measure_calls(base_url: str, *, rounds: int, calls: int) -> dict[str, list[float]]:
    variants: dict[str, Call] = {"create": typed_call, "post": post_call, "audit": whole_audit}
    figures: dict[str, list[float]] = {name: [] for name in variants}
    settings = Settings(openai_base_url=base_url, openai_api_key=None, openai_timeout_s=30)
    async with create_client(settings) as client:
        for call in variants.values():  # warm up: connections, imports, caches
            await _cpu_per_call_ms(client, call, IN_FLIGHT)
        for _ in range(rounds):
            for name, call in variants.items():
                figures[name].append(await _cpu_per_call_ms(client, call, calls))
    return figures


def maximal_reply(criteria: int) -> tuple[list[CriterionText], str]:
    """The largest reply `REPLY_LIMITS` lets through, each quote missing by its last char."""
    ids = [f"c{i}" for i in range(criteria)]
    limits = REPLY_LIMITS
    per_finding = limits.quotes_per_finding(criteria)
    quotes = [
        ("a " * limits.quote_chars)[: limits.quote_chars - 2] + f"b{n}" for n in range(per_finding)
    ]
    findings = [
        {
            "criterion_id": i,
            "verdict": "partial",
            "score": 50,
            "rationale": "r" * limits.rationale_chars,
            "evidence": quotes,
        }
        for i in ids
    ]
    document = {"findings": findings, "summary": "s" * limits.summary_chars}
    return [CriterionText(id=i, description="d") for i in ids], json.dumps(document)


def validation_ms(criteria_count: int, repeats: int) -> list[float]:
    criteria, raw = maximal_reply(criteria_count)
    times = []
    for _ in range(repeats):
        begun = time.process_time()
        validate_reply(raw, criteria=criteria, content=HOSTILE_CONTENT)
        times.append((time.process_time() - begun) * 1000)
    return times


def run(run_: Run) -> list[Section]:
    rounds, calls = (1, 200) if run_.quick else (5, 2000)
    with stack() as started:
        base_url = start_simulator(started, "0")
        figures = asyncio.run(measure_calls(base_url, rounds=rounds, calls=calls))
    worst = {n: validation_ms(n, 3 if run_.quick else 15) for n in (1, 10, 50)}
    return [_section(figures, worst, rounds=rounds, calls=calls)]


def _section(
    figures: dict[str, list[float]], worst: dict[int, list[float]], *, rounds: int, calls: int
) -> Section:
    section = Section("model-call", "8. The model call: CPU per call, the worst reply validated")
    med = {name: statistics.median(values) for name, values in figures.items()}
    section.add(
        f"In one process, {calls:,} calls per round, {IN_FLIGHT} in flight, {rounds} rounds "
        "alternating the variants, against the simulator (no latency, its own process); "
        "CPU of this process per call, median of the rounds (all rounds in brackets).",
        "",
    )
    rows = [
        ["`chat.completions.create`, the typed API", _ms(figures["create"])],
        ["`post`, the body as JSON, a small reply model (shared.llm.client)", _ms(figures["post"])],
        ["`audit_content`: the call, reply validation, findings", _ms(figures["audit"])],
    ]
    section.table(["variant", "CPU per call"], rows)
    section.target(
        "8 model call CPU, typed create vs post shortcut",
        "—",
        f"{med['create']:.2f} vs {med['post']:.2f} ms (+{med['create'] - med['post']:.2f})",
        None,
    )
    section.add(
        "Validation of the largest reply the limits allow (every quote "
        f"{REPLY_LIMITS.quote_chars:,} characters, missing by its last one; rationales and "
        'summary at their limits) against `("a " * 50000)[:100000]`, one `validate_reply`:',
        "",
    )
    rows = [
        [
            str(n),
            str(REPLY_LIMITS.quotes_per_finding(n) * n),
            f"{statistics.median(times):.1f} ms, {max(times):.1f} ms",
        ]
        for n, times in worst.items()
    ]
    section.table(["criteria", "quotes", "CPU (median, max)"], rows)
    worst_ms = max(max(times) for times in worst.values())
    section.target(
        "8 worst reply validated (100k content)", "≤ 50 ms", f"{worst_ms:.1f} ms", worst_ms <= 50
    )
    return section


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ms ({', '.join(f'{v:.2f}' for v in values)})"
