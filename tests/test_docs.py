"""The documentation as a new user meets it: every relative link resolves in a fresh clone (to a file of the
repository, and a #anchor to one of its headings, by GitHub's rule), the README links every docs/ page, and the
README's install, main-job and test commands are one line each."""

import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS_PAGES = ("studies.md", "comparisons.md", "retrain.md", "failures.md")

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*(\S*)")
CODE_SPAN = re.compile(r"(`+).+?\1")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
# [text](target "title") and ![alt](target); the text may hold one level of brackets.
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^\s)>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:|^//")


def documents() -> list[Path]:
    """The pages whose links must resolve: the README, ARCHITECTURE.md, BENCHMARKS.md and docs/*.md."""
    return [ROOT / "README.md", ROOT / "ARCHITECTURE.md", ROOT / "BENCHMARKS.md", *sorted(ROOT.glob("docs/*.md"))]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the lines outside fenced code blocks."""
    lines, fence = [], None
    for number, line in enumerate(text.splitlines(), start=1):
        opening = FENCE.match(line)
        if fence is None and opening:
            fence = opening.group(1)
        elif fence is not None:
            if line.strip().startswith(fence) and not line.strip().strip(fence[0]):
                fence = None
        else:
            lines.append((number, line))
    return lines


def fenced_blocks(text: str, language: str) -> list[list[str]]:
    """The lines of each fenced code block opened with ```language."""
    blocks, current, fence = [], None, None
    for line in text.splitlines():
        opening = FENCE.match(line)
        if fence is None and opening:
            fence, current = opening.group(1), [] if opening.group(2) == language else None
        elif fence is not None and line.strip() == fence:
            if current is not None:
                blocks.append(current)
            fence, current = None, None
        elif current is not None:
            current.append(line)
    return blocks


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: links reduced to their text, lower case, every character but letters,
    digits, '_', '-' and spaces dropped, spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a markdown file's headings; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    result = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def relative_links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link of a markdown file that points into the repository (no scheme)."""
    links = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        line = CODE_SPAN.sub("", line)  # `[text](target)` in a code span is no link
        targets = INLINE_LINK.findall(line) + REFERENCE_DEFINITION.findall(line)
        links.extend((number, target) for target in targets if not SCHEME.match(target))
    return links


def git_ignored(paths: list[Path], root: Path) -> set[Path]:
    """Those of `paths` that git ignores (absent from a fresh clone); empty where root is not a git work tree."""
    if not paths:
        return set()
    try:
        found = subprocess.run(
            ["git", "-C", str(root), "check-ignore", "--stdin"],
            input="\n".join(str(path) for path in paths),
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return set()
    if found.returncode not in (0, 1):  # 128: not a git repository
        return set()
    return {Path(line) for line in found.stdout.splitlines()}


def link_problems(pages: list[Path], root: Path) -> list[str]:
    """Why each broken relative link of `pages` is broken: its file is missing, outside the repository or
    ignored by git, or its #anchor names no heading of that file."""
    root = root.resolve()
    problems, targets = [], []
    for page in (page.resolve() for page in pages):
        for number, target in relative_links(page):
            where = f"{page.relative_to(root)}:{number}: ({target})"
            path_text, _, anchor = target.partition("#")
            destination = (page.parent / unquote(path_text)).resolve() if path_text else page
            if not destination.is_relative_to(root):
                problems.append(f"{where} leaves the repository")
            elif not destination.exists():
                problems.append(f"{where} names no file")
            else:
                targets.append((where, destination))
                if anchor and destination.suffix == ".md" and anchor not in anchors(destination):
                    problems.append(f"{where} names no heading of {destination.relative_to(root)}")
    ignored = git_ignored([destination for _, destination in targets], root)
    problems.extend(f"{where} is ignored by git: not in a fresh clone" for where, path in targets if path in ignored)
    return problems


def test_every_relative_link_of_the_documentation_resolves():
    pages = documents()
    assert {page.name for page in pages} >= {"README.md", "ARCHITECTURE.md", "BENCHMARKS.md", *DOCS_PAGES}
    assert link_problems(pages, ROOT) == []
    # The check saw the links there are: README's to every page, each docs page's back to others.
    assert len(relative_links(ROOT / "README.md")) >= 15
    for name in DOCS_PAGES:
        assert len(relative_links(ROOT / "docs" / name)) >= 3, name


def test_the_readme_links_every_docs_page_and_the_reference_documents():
    linked = {target.partition("#")[0] for _, target in relative_links(ROOT / "README.md")}
    pages = {f"docs/{page.name}" for page in ROOT.glob("docs/*.md")}
    assert {f"docs/{name}" for name in DOCS_PAGES} <= pages
    assert pages | {"BENCHMARKS.md", "ARCHITECTURE.md", "data/files/README.md"} <= linked


def test_the_link_check_finds_a_missing_file_a_missing_heading_and_a_way_out(tmp_path):
    (tmp_path / "other.md").write_text("# Does it hold? `bench/x_y.py`\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[fine](other.md#does-it-hold-benchx_ypy), [second](other.md#twice-1), [self](#page), "
        "[web](https://example.org/missing.md)\n"
        "[gone](missing.md) and ![picture](#nowhere) and [out](../outside.md)\n"
        "[third](other.md#twice-2)\n"
        "`[code span](missing.md)`\n\n"
        "```bash\n[in a fence](missing.md)\n```\n"
    )
    problems = link_problems([page], tmp_path)
    assert [problem.split(": ")[0] for problem in problems] == ["page.md:4", "page.md:4", "page.md:4", "page.md:5"]
    assert "names no file" in problems[0] and "names no heading" in problems[1] and "leaves" in problems[2]


def test_a_link_to_a_file_git_ignores_is_refused(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("studies/*\n")
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "report.html").write_text("")
    (tmp_path / "page.md").write_text("[report](studies/report.html), [itself](page.md)\n")
    problems = link_problems([tmp_path / "page.md"], tmp_path)
    assert len(problems) == 1 and "(studies/report.html) is ignored by git" in problems[0]


def test_github_slugs():
    assert github_slug("The study's verdict at full length (issue 18)") == "the-studys-verdict-at-full-length-issue-18"
    assert (
        github_slug("Does the short ranking predict the long one? `bench/proxy_validity.py`")
        == "does-the-short-ranking-predict-the-long-one-benchproxy_validitypy"
    )
    assert github_slug("A [linked](x.md) title, twice: 1/2") == "a-linked-title-twice-12"


def readme_command(predicate) -> list[tuple[str, str, str]]:
    """(previous line, line, next line) of each line of the README's ```bash blocks whose command (comment left
    out) satisfies `predicate`."""
    found = []
    for block in fenced_blocks((ROOT / "README.md").read_text(encoding="utf-8"), "bash"):
        padded = ["", *block, ""]
        for index, line in enumerate(block, start=1):
            if predicate(line.split(" #")[0].strip()):
                found.append((padded[index - 1], line, padded[index + 1]))
    return found


def assert_one_line(found: list[tuple[str, str, str]], what: str) -> None:
    assert len(found) == 1, f"the README's {what} command: {len(found)} lines found in its ```bash blocks"
    previous, line, _ = found[0]
    assert not previous.rstrip().endswith("\\") and not line.split(" #")[0].rstrip().endswith("\\"), (
        f"the README's {what} command is continued over several lines: {line!r}"
    )


def test_the_readme_install_main_job_and_test_commands_are_one_line_each():
    assert_one_line(readme_command(lambda command: "pip install -r requirements.txt" in command), "install")
    # The main job: its first line; a later one is a variant of it (a study under muP, for a full run's size),
    # each one line too.
    studies = readme_command(lambda command: command.startswith("python main.py --study_name"))
    assert studies, "the README's main job command: none found in its ```bash blocks"
    for study in studies:
        assert_one_line([study], "main job")
    ci_commands = [
        line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("python -m pytest")
    ]
    assert ci_commands == ["python -m pytest -q"]
    assert_one_line(readme_command(lambda command: command == ci_commands[0]), "test")
