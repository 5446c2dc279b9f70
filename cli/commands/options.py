"""Options every client command shares.

The command modules import nothing heavy at the top (no httpx, no progress bars):
`auditq --help` and every command's startup pay only for what they use.
"""

from typing import Annotated

import typer

DEFAULT_API_URL = "http://127.0.0.1:8000"

ApiUrl = Annotated[
    str,
    typer.Option(
        "--api-url",
        envvar="AUDITQ_API_URL",
        help="Where the auditq API runs (the /api/v1 prefix is added). "
        "An API with AUTH=keys wants a key of `auditq key create` in AUDITQ_API_KEY.",
    ),
]
JsonOutput = Annotated[
    bool, typer.Option("--json", help="Print JSON (one document) instead of tables.")
]
Wait = Annotated[
    bool,
    typer.Option("--wait", help="Poll until every audit has ended; exit 1 if any failed."),
]
PollInterval = Annotated[
    float, typer.Option("--poll-interval", min=0.01, help="Seconds between polls with --wait.")
]

DEFAULT_POLL_INTERVAL = 1.0
