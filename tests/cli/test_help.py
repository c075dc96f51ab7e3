"""--help as written: array shapes in brackets survive, and every option reads as a sentence."""

import os
import subprocess
import sys

import click
import pytest
import typer

from expertcache.cli import _register_all, app


def helps():
    _register_all()
    root = typer.main.get_command(app)
    commands = [(name, c) for name, c in root.commands.items() if not isinstance(c, click.Group)]
    commands += [(f"{group} {name}", c) for group, g in root.commands.items() if isinstance(g, click.Group)
                 for name, c in g.commands.items()]
    return [(name, p.name, p.help) for name, c in commands for p in c.params if getattr(p, "help", None)]


@pytest.mark.parametrize("args, literal", [
    (("import", "arrays"), "EXPERTS.npy: integer ids [sequences, tokens, layers, k]; -1"),
    (("export", "arrays"), "EXPERTS.npy [sequences, tokens, layers, k]"),
    (("trace",), "router logits [tokens, layers, E]"),
])
def test_bracketed_text_is_shown_as_written(args, literal):
    result = subprocess.run([sys.executable, "-m", "expertcache", *args, "--help"], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "300"})
    assert result.returncode == 0
    assert literal in " ".join(result.stdout.split())


def test_every_option_help_is_a_sentence():
    bad = [(c, p, h) for c, p, h in helps() if not (h[0].isupper() and h.rstrip().endswith("."))]
    assert bad == []
