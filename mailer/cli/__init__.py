"""The `mailer` command (typer): one module per command group, `app` composes them."""


def main() -> None:
    """The `mailer` entry point (imported lazily: `import mailer.cli.send` builds no app)."""
    from mailer.cli.app import main as run

    run()


__all__ = ["main"]
