"""`auditq rubric push`: publish a named, versioned criteria set."""

from pathlib import Path
from typing import Annotated

import typer

from cli import output
from cli.commands.options import DEFAULT_API_URL, ApiUrl, JsonOutput
from cli.errors import reports_errors
from cli.input_files import read_object

app = typer.Typer(
    help="Publish rubrics: named, versioned criteria sets.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

RubricFile = Annotated[
    Path,
    typer.Argument(
        exists=True,
        dir_okay=False,
        help="A JSON object: name, description and criteria [{id, description, weight?}].",
    ),
]


@app.command("push")
@reports_errors
def push(
    file: RubricFile, api_url: ApiUrl = DEFAULT_API_URL, json_output: JsonOutput = False
) -> None:
    """Publish FILE; publishing a name again creates its next version."""
    from cli.api_client import ApiClient

    with ApiClient(api_url) as api:
        rubric = api.post("/rubrics", read_object(file)).body
    if json_output:
        output.print_json(rubric)
    else:
        output.show(output.rubric_view(rubric))
