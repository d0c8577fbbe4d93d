"""Every command's --help reads as plain text and shows an example."""

import re

import pytest

from hessian_lib.cli import build_parser, main

#: Markup that a terminal prints literally: RST literals and roles, Markdown code spans and bullets.
MARKUP = re.compile(r"``|:(func|class|mod|meth|attr|data|math|ref|numref):|`[^`\s]+`|^\s*\* ", re.MULTILINE)


def _commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return [("", parser), *sub.choices.items()]


@pytest.mark.parametrize("name, parser", _commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_help_is_plain_text_with_an_example(name, parser):
    text = parser.format_help()
    found = MARKUP.search(text)
    assert found is None, f"{name or 'main'} --help shows markup {found.group(0)!r}"
    example = r"^examples?:\n  python -m hessian_lib" + (f" {name}" if name else "")
    assert re.search(example, text, re.MULTILINE | re.IGNORECASE), f"{name or 'main'} --help has no example"
    assert parser.description, f"{name or 'main'} --help says nothing about what the command does"


def test_help_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as done:
        main(["spectrum", "--help"])
    assert done.value.code == 0 and "--bn-mode" in capsys.readouterr().out
