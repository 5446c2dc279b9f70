"""`auditq simulator`: its options, parsed without loading the server.

The server (FastAPI, uvicorn, the prompt's parser) lives in `cli.simulator` and is
imported only when the command runs, so that `auditq --help` and the client
commands do not pay for it.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Literal, TypeVar, cast, get_args

import typer

if TYPE_CHECKING:
    from cli.simulator import SimulatorConfig

FaultKind = Literal[
    "429",
    "500",
    "503",
    "400",
    "401",
    "403",
    "404",
    "context_length",
    "hang",
    "malformed",
    "refusal",
    "truncated",
    "wrong_ids",
    "content_filter",
    "hostile",
    "contradiction",
    "inconsistent",
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
DEFAULT_FAULTS: tuple[FaultKind, ...] = (
    "429",
    "500",
    "hang",
    "malformed",
    "refusal",
    "truncated",
    "wrong_ids",
    "content_filter",
)
_T = TypeVar("_T")


def parse_latency(value: str) -> tuple[float, float]:
    """`"200"` -> (200, 200); `"100..500"` -> (100, 500), milliseconds."""
    low, _, high = value.partition("..")
    try:
        bounds = (float(low), float(high or low))
    except ValueError:
        raise ValueError(f"expected '200' or '100..500', got {value!r}") from None
    if not 0 <= bounds[0] <= bounds[1]:
        raise ValueError(f"expected 0 <= low <= high, got {value!r}")
    return bounds


def parse_fault_kinds(value: str) -> tuple[FaultKind, ...]:
    """`"429, hang"` -> ("429", "hang"); unknown kinds are refused."""
    kinds = [kind.strip() for kind in value.split(",") if kind.strip()]
    unknown = [kind for kind in kinds if kind not in FAULT_KINDS]
    if unknown:
        raise ValueError(f"unknown fault kinds: {', '.join(unknown)}")
    return tuple(cast(FaultKind, kind) for kind in kinds)


def command(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8100,
    latency_ms: Annotated[
        str,
        typer.Option(help="Delay before each answer, ms: fixed ('200') or a range ('100..500')."),
    ] = "0",
    fault_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of requests that get a random fault.")
    ] = 0.0,
    faults: Annotated[
        str,
        typer.Option(help=f"Comma-separated fault kinds to draw from: {', '.join(FAULT_KINDS)}."),
    ] = ",".join(DEFAULT_FAULTS),
    retry_after_s: Annotated[
        int, typer.Option(min=0, help="Retry-After (seconds) sent with simulated 429s.")
    ] = 1,
    seed: Annotated[int | None, typer.Option(help="Seed of the fault and latency draws.")] = None,
    cached_share: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="Share of each prompt's tokens reported as cached (0 to 1)."
        ),
    ] = 0.0,
) -> None:
    """Run the bundled OpenAI-compatible model simulator. Its results are synthetic."""
    from cli.simulator import SimulatorConfig, create_app

    latency_min_ms, latency_max_ms = _parse_option(parse_latency, latency_ms, "--latency-ms")
    config = SimulatorConfig(
        latency_min_ms=latency_min_ms,
        latency_max_ms=latency_max_ms,
        fault_rate=fault_rate,
        faults=_parse_option(parse_fault_kinds, faults, "--faults"),
        retry_after_s=retry_after_s,
        seed=seed,
        cached_share=cached_share,
    )
    _print_banner(host, port, config)
    import uvicorn

    # No access log: at benchmark rates it costs more than the simulated model does.
    # `workers=1`: uvicorn would otherwise read the API's WEB_CONCURRENCY from the
    # environment and refuse to start an app object in several processes.
    uvicorn.run(create_app(config), host=host, port=port, access_log=False, workers=1)


def _parse_option(parse: Callable[[str], _T], value: str, option: str) -> _T:
    try:
        return parse(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def _print_banner(host: str, port: int, config: "SimulatorConfig") -> None:
    rule = "=" * 64
    lines = [
        rule,
        "  SIMULATOR — results are synthetic, no language model is called",
        f"  OPENAI_BASE_URL=http://{host}:{port}/v1",
        f"  latency {config.latency_min_ms:g}..{config.latency_max_ms:g} ms, "
        f"fault rate {config.fault_rate:g} ({', '.join(config.faults) or 'none'})",
        rule,
    ]
    typer.secho("\n".join(lines), fg=typer.colors.YELLOW, bold=True, err=True)
