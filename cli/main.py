"""The `auditq` command: a registry; each command lives in its own module."""

import typer

from cli import dev, simulator_command
from cli.commands import audits, batches, rubrics, status, tenants

app = typer.Typer(
    name="auditq",
    help="Run language-model audits at scale.",
    no_args_is_help=True,
    add_completion=False,
    # Plain help, as click prints it: flags read as flags (no `<bool>`), and no rich to load.
    rich_markup_mode=None,
)

app.command("dev")(dev.command)
app.command("migrate")(dev.migrate_command)
app.command("simulator")(simulator_command.command)
app.command("submit")(audits.submit)
app.command("status")(status.status)
app.add_typer(batches.app, name="batch")
app.add_typer(audits.app, name="audit")
app.add_typer(rubrics.app, name="rubric")
app.add_typer(tenants.keys_app, name="key")
app.add_typer(tenants.tenants_app, name="tenant")

if __name__ == "__main__":
    app()
