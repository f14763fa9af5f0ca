"""The public surface: everything in probekit.__all__ resolves, and the CLI lists every subcommand."""

from __future__ import annotations

import pytest

import probekit as pk


def test_every_export_resolves():
    for name in pk.__all__:
        assert getattr(pk, name) is not None, name
    with pytest.raises(AttributeError):
        pk.no_such_name  # noqa: B018


def test_cli_help_lists_every_subcommand(capsys):
    from probekit.cli import SUBCOMMANDS, build_parser

    help_text = build_parser().format_help()
    for name in (*SUBCOMMANDS, "report"):
        assert name in help_text


def test_cli_reports_user_errors_without_traceback(capsys):
    from probekit.cli import main

    assert main(["heads", "--model", "no-such-model", "--data", "seed:explored", "--out", "/tmp/x"]) == 2
    err = capsys.readouterr().err
    assert "error: unknown model 'no-such-model'" in err and "Traceback" not in err
