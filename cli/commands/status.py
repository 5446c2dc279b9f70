"""`auditq status`: the fleet at a glance, from `GET /api/v1/status` (an admin key's)."""

import typer

from cli import output
from cli.commands.options import DEFAULT_API_URL, ApiUrl, JsonOutput
from cli.errors import reports_errors


@reports_errors
def status(api_url: ApiUrl = DEFAULT_API_URL, json_output: JsonOutput = False) -> None:
    """Queue depth and oldest age, audits running, workers alive, throughput over the last
    5 minutes and failures by error code over the last hour. Wants an admin key with
    AUTH=keys (AUDITQ_API_KEY)."""
    from cli.api_client import ApiClient
    from cli.fleet_view import fleet_view

    with ApiClient(api_url) as api:
        fleet = api.get("/status")
    if json_output:
        output.print_json(fleet)
        raise typer.Exit()
    output.show(fleet_view(fleet))
