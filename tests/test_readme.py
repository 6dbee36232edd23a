"""README as a newcomer reads it, and the docs it links to.

The first command comes early, README stays short, the summary it shows is what ``make demo`` prints from the
committed metrics, and every relative link in README and ``docs/`` leads to a file (and heading) that exists.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 260
FIRST_COMMAND_BY_LINE = 40
# make demo's last command (Makefile), run on the committed metrics/headline.json
SUMMARY_CMD = ["-m", "stages.report.headline", "metrics/headline.json", "--report", "metrics/report.html"]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def markdown_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but hyphens and underscores dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        if m := re.match(r"#{1,6} (.+)", line):
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    return out


def test_first_command_is_make_demo_within_the_first_lines() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(("```bash", "```sh")))
    assert lines[start + 1].startswith("make demo"), lines[start + 1]
    assert start + 2 <= FIRST_COMMAND_BY_LINE, f"README's first command is on line {start + 2}"


def test_readme_is_short() -> None:
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"README.md has {n} lines; move reference material to docs/"


def test_readme_summary_is_what_make_demo_prints() -> None:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- demo-summary -->\n```text\n(.*?)```\n<!-- /demo-summary -->", text, re.S)
    assert block, "README has no ```text block between <!-- demo-summary --> and <!-- /demo-summary -->"
    printed = subprocess.run(
        [sys.executable, *SUMMARY_CMD], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert block.group(1) == printed, (
        "README's demo summary differs from the committed metrics/headline.json: paste the output of "
        f"`python {' '.join(SUMMARY_CMD)}` between the demo-summary markers"
    )


def test_every_relative_link_leads_somewhere() -> None:
    broken = []
    for path in markdown_files():
        for target in LINK.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, broken


def test_slug_matches_github() -> None:
    assert slug("Auditing a commit: `steep audit`") == "auditing-a-commit-steep-audit"
    assert slug("Restatements and question/answer pairs: one line per condition") == (
        "restatements-and-questionanswer-pairs-one-line-per-condition"
    )
