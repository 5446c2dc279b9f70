"""A one-time look at the model provider as a worker starts: a clear warning, never a failure.

A wrong `OPENAI_BASE_URL` or key otherwise shows only as audits failing, one by one,
with a terse error code. The probe lists the provider's models (`GET /models`, which
costs no tokens) and logs what it found. It never stops the worker: the provider may
come up later, and a transient outage must not take the fleet down with it.
"""

import openai
import structlog
from openai import AsyncOpenAI

from shared.llm.errors import classify

logger = structlog.get_logger("auditq.llm")

PROBE_TIMEOUT_S = 10.0


async def probe_provider(client: AsyncOpenAI, *, model: str) -> None:
    """Log `model_provider_ok`, or a `model_provider_unreachable` warning saying why.

    `model_listed` is informative only: many servers (the simulator, some proxies) accept
    model names they do not list.
    """
    # Without credentials a URL may carry (`https://user:key@host/v1`).
    base_url = str(client.base_url.copy_with(username=None, password=None))
    try:
        page = await client.with_options(timeout=PROBE_TIMEOUT_S).models.list()
    except openai.NotFoundError:
        # Some OpenAI-compatible servers serve completions but no model list.
        logger.info("model_provider_ok", base_url=base_url, model=model, models_listed=None)
        return
    except Exception as exc:  # whatever went wrong, the probe only reports it
        error = classify(exc)
        logger.warning(
            "model_provider_unreachable",
            base_url=base_url,
            model=model,
            error_code=error.code,
            reason=error.message,
            hint="check OPENAI_BASE_URL and OPENAI_API_KEY; audits fail until the provider answers",
        )
        return
    listed = {entry.id for entry in page.data}
    logger.info(
        "model_provider_ok",
        base_url=base_url,
        model=model,
        models_listed=len(listed),
        model_listed=model in listed,
    )
