"""How the job timeout, the lease and the model timeout fit together.

With T = `OPENAI_TIMEOUT_S` (the SDK's own retries are off):

- one attempt makes at most two model calls one after the other (an invalid reply
  is asked again once; an audit's samples make theirs at the same time), so the model
  can hold it for at most 2·T;
- the claim and the finish are two short statements, given `DB_MARGIN_S` (10 s),
  which also covers the finish retrying for 7.5 s while PostgreSQL restarts;
- **job timeout** = 2·T + 10 s: arq cancels a run that outlives it;
- **lease** = job timeout + 5 s: once it has passed, the attempt that holds it is
  over for certain (finished, cancelled by arq, or its process is gone), so a
  new attempt may claim the audit;
- arq re-delivers the job of a killed worker once its in-progress key expires,
  at job timeout + 10 s, just after the lease: the re-delivered job claims the
  audit itself, and the reconciler is only the safety net.

For the default T = 60 s: job timeout 130 s, lease 135 s.
"""

from dataclasses import dataclass
from datetime import timedelta

from shared.config import Settings

DB_MARGIN_S = 10.0
LEASE_MARGIN_S = 5.0


@dataclass(frozen=True)
class JobTiming:
    job_timeout_s: float
    lease: timedelta

    @classmethod
    def from_settings(cls, settings: Settings) -> "JobTiming":
        job_timeout_s = 2 * settings.openai_timeout_s + DB_MARGIN_S
        return cls(
            job_timeout_s=job_timeout_s, lease=timedelta(seconds=job_timeout_s + LEASE_MARGIN_S)
        )
