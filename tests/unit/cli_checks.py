"""Running `tlscale` in this process and checking that bad input is refused the way users need."""
from __future__ import annotations

from typer.testing import CliRunner

from tlscale.cli import app

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, list(map(str, args)))
    return result.exit_code, result.output


def expect_error(args, *fragments):
    """Exit code 2, no traceback, and every fragment in the message."""
    code, output = invoke(*args)
    assert code == 2, f"exit {code}, output:\n{output}"
    assert "Traceback" not in output
    for fragment in fragments:
        assert fragment in output, f"{fragment!r} not in:\n{output}"
    return output
