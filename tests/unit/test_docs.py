"""The README stays true to the repository: its make-target table is what `make help` lists, its
Documentation section links every page of docs/, and the relative links of the README and docs/ lead to
files that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
# The rule `make help` uses (an awk program over the Makefile): "target: ... ## description".
HELP_LINE = re.compile(r"^([a-zA-Z_-]+):.*?## (.*)$")
TARGET_ROW = re.compile(r"^\| `make ([a-zA-Z_-]+)` \| (.*) \|$")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start: end if end > 0 else len(text)]


def make_help_targets() -> list[tuple[str, str]]:
    lines = (ROOT / "Makefile").read_text(encoding="utf-8").splitlines()
    return [(m.group(1), m.group(2).strip()) for line in lines if (m := HELP_LINE.match(line))]


def test_the_readme_lists_the_make_targets_of_make_help() -> None:
    rows = [(m.group(1), m.group(2).strip()) for line in _section(README.read_text(encoding="utf-8"),
                                                                  "Make targets").splitlines()
            if (m := TARGET_ROW.match(line))]
    assert rows == make_help_targets()


def test_the_readme_starts_with_make_run_and_make_test() -> None:
    text = README.read_text(encoding="utf-8")
    first_block = text[text.index("```"):]
    commands = [line.split()[0:2] for line in first_block.split("```")[1].splitlines()[1:] if line.startswith("make")]
    assert commands == [["make", "run"], ["make", "test"]]


def test_the_readme_links_every_docs_page() -> None:
    linked = set(LINK.findall(_section(README.read_text(encoding="utf-8"), "Documentation")))
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert pages - linked == set()


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown page (outside code blocks)."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        heading = re.match(r"^#{1,6} (.*)$", line)
        if in_code or heading is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def test_anchors_follow_github_rules() -> None:
    text = "# A title\n## Limits: what changes past one database\n```\n# not a heading\n```\n## A title\n"
    assert anchors(text) == {"a-title", "limits-what-changes-past-one-database", "a-title-1"}


def test_relative_links_lead_to_files_and_headings_that_exist() -> None:
    broken: list[str] = []
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            path, _, anchor = target.partition("#")
            if re.match(r"^[a-z][a-z0-9+.-]*:", path):  # a URL
                continue
            file = (page.parent / path) if path else page
            if not file.exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text(encoding="utf-8")):
                broken.append(f"{page.relative_to(ROOT)} -> {target} (no such heading)")
    assert broken == []
