"""The sampling parameters sent with every model call, and the models that refuse them.

`OPENAI_TEMPERATURE` (default 0: the judge's most likely answer, the same content judged
alike as far as the provider allows) and `OPENAI_SEED` (unset: none sent) go with every
call, and each audit's provenance records them as sent. Sample i of an audit of several
`samples` is sent the seed plus i (`for_sample`).

Some models refuse one: OpenAI's reasoning models take no temperature but their default,
and answer 400 naming it (`param: "temperature"`); a self-hosted server may refuse a seed
the same way. Such a call is made again at once without the parameter, and this process
no longer sends it to that model: one refused call per model and process, not one per
audit. The refusal is logged (`model_parameter_refused`), and the provenance of the
audits answered without it shows it as null. Any other 400 is the permanent error it
always was.
"""

from dataclasses import dataclass, field

import structlog

from shared.config import Settings

log = structlog.get_logger(__name__)

# The parameters a model may refuse, in the order they are given up.
PARAMETERS = ("temperature", "seed")


@dataclass
class Sampling:
    """What this process sends each model: the settings, less what a model refused."""

    temperature: float | None = None
    seed: int | None = None
    _refused: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Sampling":
        return cls(temperature=settings.openai_temperature, seed=settings.openai_seed)

    def parameters(self, model: str) -> dict[str, float | int]:
        """The sampling parameters to send `model`; those not set or refused are left out."""
        refused = self._refused.get(model, set())
        values = {"temperature": self.temperature, "seed": self.seed}
        return {
            name: value
            for name, value in values.items()
            if value is not None and name not in refused
        }

    def for_sample(self, index: int) -> "Sampling":
        """What sample `index` of an audit sends: the seed plus `index`, so that n samples
        of one request, with a seed set, are n draws rather than the same one n times,
        and each stays reproducible. Refusals are shared with this one."""
        seed = None if self.seed is None else self.seed + index
        return Sampling(temperature=self.temperature, seed=seed, _refused=self._refused)

    def refuse(self, model: str, name: str) -> None:
        """`model` refused `name`: send it no more from this process."""
        self._refused.setdefault(model, set()).add(name)
        log.warning("model_parameter_refused", model=model, parameter=name)
