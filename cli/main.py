"""The `auditq` command: a registry; each command lives in its own module."""

import typer

from cli import dev, simulator
from cli.commands import audits, batches, rubrics

app = typer.Typer(
    name="auditq",
    help="Run language-model audits at scale.",
    no_args_is_help=True,
    add_completion=False,
)

app.command("dev")(dev.command)
app.command("migrate")(dev.migrate_command)
app.command("simulator")(simulator.command)
app.command("submit")(audits.submit)
app.add_typer(batches.app, name="batch")
app.add_typer(audits.app, name="audit")
app.add_typer(rubrics.app, name="rubric")

if __name__ == "__main__":
    app()
