"""The README and docs/: short, self-contained, and in step with the command and the API."""

import argparse
import importlib
import re
from pathlib import Path

import daskdict
from daskdict import cli

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
DEMO = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/daskdict demo"
# references that only make sense inside the team that builds daskdict
LEAK = re.compile(r"\.\./shared|DESIGN\.md|\b[Ss]eed 00[0-9]|\b[Ii]ssue [0-9]+\b")


def product_texts():
    paths = [README, ROOT / "benchmarks" / "README.md", ROOT / "notebooks" / "quickstart.ipynb",
             *DOCS.glob("*.md"), *(ROOT / "examples").iterdir()]
    return {p: p.read_text(encoding="utf-8") for p in paths if p.is_file()}


def test_readme_is_short_and_keeps_the_two_commands():
    text = README.read_text(encoding="utf-8")
    assert len(text.encode()) <= 8192
    assert DEMO in text.splitlines()
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = next(line for line in ci.splitlines() if "pytest" in line).strip()
    assert test_command in text.splitlines()


def test_readme_python_uses_names_that_exist():
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    for block in blocks:
        for module, name in re.findall(r"^from (daskdict[.\w]*) import (\w+)", block, re.M):
            assert hasattr(importlib.import_module(module), name), (module, name)
        for name in re.findall(r"\bdaskdict\.(\w+)\(", block):
            assert hasattr(daskdict, name), name


def test_readme_links_resolve():
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#]+)\)", text)
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        if "://" not in link:
            assert (ROOT / link).exists(), link
    for page in DOCS.glob("*.md"):
        for link in re.findall(r"\]\(([^)#]+)\)", page.read_text(encoding="utf-8")):
            if "://" not in link:
                assert (page.parent / link).exists(), (page.name, link)


def test_no_references_outside_the_product():
    for path, text in product_texts().items():
        for number, line in enumerate(text.splitlines(), 1):
            assert not LEAK.search(line), f"{path.relative_to(ROOT)}:{number}: {line}"


def test_api_page_names_every_public_name():
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    for name in daskdict.__all__:
        assert f"daskdict.{name}" in text, name


def test_cli_page_names_every_verb_and_option():
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    parser = cli.build_parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for verb, sub in verbs.choices.items():
        section = text.split(f"## `daskdict {verb}`", 1)
        assert len(section) == 2, verb
        section = section[1].split("\n## ", 1)[0]
        for action in sub._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            for option in action.option_strings or [action.dest.upper()]:
                assert f"`{option}" in section, (verb, option)
