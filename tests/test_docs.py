"""The user documentation stays true: the CLI reference matches the parser, every link in
README.md and docs/ points to a file of the repository, every screenshot is used, and user
pages name dates and versions rather than work sessions."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from napari_medattn.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])


def load_script(name: str):
    """A script of ``scripts/`` as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = load_script("make_cli_reference")

# --- links -------------------------------------------------------------------------------

_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+).+?\1", re.DOTALL)
_INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]*)")
_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.MULTILINE)
_HTML = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']*)["']""", re.IGNORECASE)
_AUTOLINK = re.compile(r"<([a-zA-Z][a-zA-Z0-9+.-]*:[^>\s]*)>")
_BARE_URL = re.compile(r"\b(?:https?://|ftp://|www\.)\S+", re.IGNORECASE)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def link_targets(markdown: str) -> list[str]:
    """Every link target of a Markdown page: inline links and images, reference
    definitions, HTML ``src``/``href``, autolinks and bare URLs (which renderers turn into
    links). Code blocks and code spans hold examples, not links, and are skipped."""
    text = _CODE_SPAN.sub("", _FENCE.sub("", markdown))
    targets = [target.strip("<>") for target in _INLINE.findall(text) + _DEFINITION.findall(text)]
    targets += _HTML.findall(text) + _AUTOLINK.findall(text)
    # What is left once the links above are removed: URLs a renderer links by itself.
    rest = _AUTOLINK.sub("", _HTML.sub("", _DEFINITION.sub("", _INLINE.sub("", text))))
    return targets + _BARE_URL.findall(rest)


_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def heading_anchors(markdown: str) -> set[str]:
    """The anchors a renderer gives the headings of a page (GitHub's rule: lower case,
    punctuation dropped, spaces to hyphens)."""
    headings = _HEADING.findall(_FENCE.sub("", markdown))
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def link_problems(page: Path, root: Path) -> list[str]:
    """One sentence per link of ``page`` that leaves ``root``, names no file in it, or names
    a heading its Markdown page does not have."""
    problems = []
    for target in link_targets(page.read_text(encoding="utf-8")):
        where = f"{page.relative_to(root)}: {target}"
        if _SCHEME.match(target) or target.lower().startswith("www.") or target.startswith("//"):
            problems.append(f"{where} leaves the repository")
            continue
        path, _, fragment = unquote(target.split("?", 1)[0]).partition("#")
        if path.startswith("/"):
            problems.append(f"{where} is absolute; write it relative to the page")
            continue
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.is_relative_to(root):
            problems.append(f"{where} leaves the repository")
        elif not resolved.exists():
            problems.append(f"{where} names no file")
        elif fragment and resolved.suffix == ".md" and fragment not in heading_anchors(
                resolved.read_text(encoding="utf-8")):
            problems.append(f"{where} names no heading of {resolved.name}")
    return problems


def test_every_link_of_readme_and_docs_stays_in_the_repository():
    assert len(PAGES) > 5
    problems = [problem for page in PAGES for problem in link_problems(page, ROOT)]
    assert not problems, "\n".join(problems)


def test_link_check_finds_each_kind_of_bad_link(tmp_path):
    (tmp_path / "docs" / "shots").mkdir(parents=True)
    (tmp_path / "docs" / "shots" / "a.png").write_bytes(b"")
    (tmp_path / "docs" / "other.md").write_text("# Part\n\n## Window/level: presets\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# Top\n![shot](shots/a.png) [other](other.md#part) [here](#top) [up](../docs/other.md)\n"
        "[wl](other.md#windowlevel-presets) [gone](other.md#gone) [nowhere](#nowhere)\n"
        "[out](https://example.org/x) [missing](shots/b.png) [above](../../outside.md)\n"
        "[abs](/etc/passwd) <https://example.org/auto> see www.example.org or\n"
        "http://example.org/bare. [ref]: https://example.org/ref\n"
        '<img src="shots/c.png">\n'
        "```\nmedattn pacs --url http://localhost:8042/dicom-web [x](missing.md)\n```\n"
        "`http://localhost:8787` in code is not a link\n"
    )
    problems = link_problems(page, tmp_path)
    assert sorted(problems) == sorted([
        "docs/page.md: https://example.org/x leaves the repository",
        "docs/page.md: shots/b.png names no file",
        "docs/page.md: ../../outside.md leaves the repository",
        "docs/page.md: /etc/passwd is absolute; write it relative to the page",
        "docs/page.md: https://example.org/auto leaves the repository",
        "docs/page.md: www.example.org leaves the repository",
        "docs/page.md: http://example.org/bare. leaves the repository",
        "docs/page.md: https://example.org/ref leaves the repository",
        "docs/page.md: shots/c.png names no file",
        "docs/page.md: other.md#gone names no heading of other.md",
        "docs/page.md: #nowhere names no heading of page.md",
    ])


def test_every_screenshot_is_shown_on_a_page():
    shown = {(page.parent / target).resolve()
             for page in PAGES for target in link_targets(page.read_text(encoding="utf-8"))}
    unused = [png.relative_to(ROOT).as_posix()
              for png in sorted((ROOT / "docs" / "screenshots").glob("*.png"))
              if png.resolve() not in shown]
    assert not unused, f"screenshots no page shows: {unused}"


# --- wording -----------------------------------------------------------------------------

_SESSION = re.compile(
    r"\bsession\s*-?\s*\d+|\bsession's\b|"
    r"\b(?:this|that|previous|next|earlier|later|other|concurrent|work|these|two)\s+sessions?\b",
    re.IGNORECASE)


def test_user_pages_name_dates_and_versions_not_work_sessions():
    found = [f"{page.relative_to(ROOT)}:{number}: {line.strip()}"
             for page in PAGES
             for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
             if _SESSION.search(line)]
    assert not found, "say the date or version instead:\n" + "\n".join(found)


# --- CLI reference -----------------------------------------------------------------------

def test_cli_reference_matches_the_parser():
    page = reference.REFERENCE.read_text(encoding="utf-8")
    made_with = reference.recorded_python(page)
    if made_with != reference.python_version():
        pytest.skip(f"docs/cli.md was made with Python {made_with}; argparse formats help "
                    f"differently under {reference.python_version()}")
    stale = f"docs/cli.md is stale: run `{reference.REGENERATE}` and commit docs/cli.md"
    assert page == reference.cli_reference(), stale


def test_cli_reference_has_every_command_with_its_usage():
    text = reference.cli_reference()
    sections = dict(re.findall(r"^## (medattn[\w -]*)\n\n```text\n(.*?)^```", text,
                               re.MULTILINE | re.DOTALL))
    assert len(COMMANDS) >= 7
    parsers = {prog: parser for prog, _, parser in reference.subcommands(build_parser())}
    for name in COMMANDS:
        section = sections[f"medattn {name}"]
        assert section.startswith(f"usage: medattn {name} ")
        # Every option the parser accepts is documented in its section.
        subparser = parsers[f"medattn {name}"]
        for action in subparser._actions:
            for option in action.option_strings:
                assert option in section, f"{option} of medattn {name} missing"
    # The top-level table links each command to its section.
    for name in COMMANDS:
        assert f"[`medattn {name}`](#medattn-{name})" in text


def test_check_mode_exits_1_on_a_stale_reference_and_names_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(reference, "ROOT", tmp_path)
    monkeypatch.setattr(reference, "REFERENCE", tmp_path / "docs" / "cli.md")
    (tmp_path / "docs").mkdir()
    assert reference.main(["--check"]) == 1  # missing
    reference.REFERENCE.write_text(reference.cli_reference().replace("--out", "--output", 1))
    assert reference.main(["--check"]) == 1  # one option renamed
    assert "run `.venv/bin/python scripts/make_cli_reference.py`" in capsys.readouterr().err
    assert reference.main([]) == 0
    assert reference.main(["--check"]) == 0
    assert sorted(p.name for p in (tmp_path / "docs").iterdir()) == ["cli.md"]
    assert reference.recorded_python(reference.REFERENCE.read_text()) == reference.python_version()


def test_cli_reference_does_not_depend_on_the_terminal_width(monkeypatch):
    texts = []
    for columns in ("40", "250"):
        monkeypatch.setenv("COLUMNS", columns)
        texts.append(reference.cli_reference())
    assert texts[0] == texts[1]
    assert max(len(line) for text in texts for line in text.split("```text")[1].splitlines()) <= 100
