"""The `auditq` command: a registry; each command lives in its own module."""

import typer

from cli import dev, simulator

app = typer.Typer(
    name="auditq",
    help="Run language-model audits at scale.",
    no_args_is_help=True,
    add_completion=False,
)

app.command("dev")(dev.command)
app.command("migrate")(dev.migrate_command)
app.command("simulator")(simulator.command)

if __name__ == "__main__":
    app()
