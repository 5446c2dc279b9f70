"""An attempt's samples: the audit's n model calls, made at once, and what became of them.

An audit asks for `samples` (1-5) independent calls with the same request. They run
concurrently within one attempt, so the attempt takes as long as its slowest sample and
costs n times the tokens of one call. All n are counted in the model's rate limits before
the attempt claims the audit (worker/admission.py), like a single call.

A sample that fails is not tried again inside the attempt: the job's timeout allows each
call its timeout once, and its corrective call once (worker/timing.py), and waiting out a
backoff there would hold a worker slot. Instead:

- when a majority of the samples answered (more than half: 1 of 1, 2 of 2 or 3, 3 of 4 or
  5), the attempt succeeds with those; the failures are logged (`samples_failed`) and
  their tokens counted with the others';
- otherwise the attempt fails as a single call would: with a transient error if any
  sample's was transient, so that the attempt is retried after the backoff and the longest
  `Retry-After` (MAX_ATTEMPTS counts it, as any attempt), else with the first permanent
  error. Every sample's tokens are charged to it.

A sample that fails transiently thus retries as an attempt does when its audit needs it;
the retried attempt asks all n samples again, since an answer is kept only by the fenced
write of the attempt that got it.
"""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cached_property

import structlog

from shared.llm.errors import ModelError
from shared.llm.schemas import ModelOutcome
from shared.llm.usage import NO_USAGE, TokenUsage

log = structlog.get_logger("worker.run_audit")

# Sample `index` (0 to n - 1) of the attempt: its sampling differs by it (the seed).
AskSample = Callable[[int], Awaitable[ModelOutcome]]
OnError = Callable[[ModelError], Awaitable[None]]


@dataclass(frozen=True)
class Sampled:
    """The samples of an attempt: those that answered, in the order asked, and the errors."""

    answered: list[ModelOutcome]
    failed: list[ModelError]

    @cached_property
    def usage(self) -> TokenUsage:
        """Every answered call of every sample, a failed sample's that were answered too."""
        usages = [o.usage for o in self.answered] + [e.usage or NO_USAGE for e in self.failed]
        return sum(usages, NO_USAGE)

    @property
    def model_calls(self) -> int:
        """Requests made: a corrective call counts, a failed sample counts one."""
        return sum(o.model_calls for o in self.answered) + len(self.failed)

    @property
    def majority(self) -> bool:
        return 2 * len(self.answered) > len(self.answered) + len(self.failed)

    def failure(self) -> ModelError:
        """The error the attempt fails with when too few samples answered."""
        transient = [e for e in self.failed if e.transient]
        error = max(transient, key=_retry_after) if transient else self.failed[0]
        asked = len(self.answered) + len(self.failed)
        if asked == 1:
            return error
        combined = ModelError(
            error.code,
            f"{len(self.failed)} of {asked} samples failed; {error.message}",
            transient=error.transient,
            retry_after=error.retry_after,
        )
        if self.usage.replies:
            combined.charged(self.usage)
        return combined


def _retry_after(error: ModelError) -> float:
    return error.retry_after or 0.0


async def ask_samples(count: int, ask: AskSample, *, on_error: OnError) -> Sampled:
    """Ask `count` samples at once; the majority that answered, else raise `ModelError`.

    `on_error` hears of each failed sample (a provider's 429 pauses the model for every
    worker). Cancelled, it cancels the samples still waiting.
    """
    results = await asyncio.gather(*(ask(index) for index in range(count)), return_exceptions=True)
    answered: list[ModelOutcome] = []
    failed: list[ModelError] = []
    for result in results:
        if isinstance(result, ModelError):
            failed.append(result)
        elif isinstance(result, BaseException):
            raise result  # not a model's failure: a bug, or a cancellation
        else:
            answered.append(result)
    for error in failed:
        await on_error(error)
    sampled = Sampled(answered, failed)
    if not sampled.majority:
        raise sampled.failure()
    if failed:
        codes = [error.code for error in failed]
        log.warning("samples_failed", failed=len(failed), samples=count, error_codes=codes)
    return sampled
