"""The documentation: README.md is a short front door that states CI's test command, every topic page under docs/
is reachable from it and starts with a paragraph, and every relative link in the Markdown files resolves.

Links are checked as GitHub renders them: `[text](path)`, `![alt](path)` and `[label]: path` definitions outside
code (fenced blocks and inline code spans), resolved against the linking file's folder; a `#anchor` must name a
heading of the target Markdown file under GitHub's slug rules (text content lowercased, punctuation other than `-`
and `_` removed, each space turned into `-`, a repeated slug suffixed `-1`, `-2`, ...) or an explicit
`<a id=...>`/`<a name=...>`. Links with a scheme (https:, mailto:) are not followed.

Paths and commands named in the text, code included, must exist too: a source path under training/, tests/,
benchmarks/, demo/, docs/ or .ci/ (placeholders such as `<id>`, `*` or `...` are skipped), the script of a
`python X.py`, `bash X.sh` or `sbatch X.sh` command, and the module of a `python -m training...`/`demo...` command.
Generated files (models/, measurements/, slurms/) are not checked: they exist after a run, not in the repository.
Every `--flag` the docs name must still appear in the code, and every docs/<page>.md the code names must exist.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
README_LIMIT_BYTES = 12 * 1024
TEST_COMMAND = ".venv/bin/python -m pytest -q tests"
FOLDER_READMES = ["benchmarks/README.md", "models/README.md", "slurms/README.md", "measurements/README.md"]

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
INLINE_LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*<?([^)\s>]*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
LINK_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:\s+(.*?))?(?:\s+#+)?\s*$")
HTML_ANCHOR = re.compile(r"<a\s[^>]*\b(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
SOURCE_PATH = re.compile(r"(?<![\w./<-])((?:\.ci|training|tests|benchmarks|demo|docs)/[\w./<>*-]*[\w/>*])")
SCRIPT_COMMAND = re.compile(r"(?:\bpython3?|\.venv/bin/python|\bbash|\bsbatch)\s+((?:[\w.-]+/)*[\w-]+\.(?:py|sh))\b")
MODULE_COMMAND = re.compile(r"\bpython3?\s+-m\s+((?:training|demo|benchmarks|tests)(?:\.\w+)*)")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]")
OTHER_TOOLS_FLAGS: set[str] = set()  # flags of other programs (sbatch, torchrun, ...) that the code never names


def markdown_files() -> list[Path]:
    """The Markdown files whose links are checked: README.md, docs/*.md and the folders' READMEs."""
    files = [README, *sorted((REPO / "docs").glob("*.md"))]
    return files + [REPO / name for name in FOLDER_READMES if (REPO / name).exists()]


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans removed."""
    lines, fence = [], None
    for line in text.splitlines():
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
        elif fence is not None and match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
            fence = None
        elif fence is None:
            lines.append(CODE_SPAN.sub("", line))
    return lines


def links(text: str) -> list[str]:
    """Every link target of a Markdown text (inline links, images, link definitions), outside code."""
    found = []
    for line in prose_lines(text):
        found += [target for _label, target in INLINE_LINK.findall(line)]
        definition = LINK_DEFINITION.match(line)
        if definition:
            found.append(definition.group(1))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's Markdown text (the text content, not the markup)."""
    text = re.sub(r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\([^)]*\)", r"\1", heading)  # a link counts by its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = CODE_SPAN.sub(lambda m: m.group(2), text).replace("*", "")  # code spans, emphasis markers
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors a Markdown text offers: its headings' slugs (repeats suffixed -1, -2, ...) and HTML anchors."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    fence = None
    for line in text.splitlines():
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
            continue
        if fence is not None:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
                fence = None
            continue
        found.update(HTML_ANCHOR.findall(line))
        heading = ATX_HEADING.match(line)
        if heading:
            base = slug(heading.group(2) or "")
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(path: Path, repo: Path = REPO) -> list[str]:
    """The links of the Markdown file `path` that do not resolve, each with the reason."""
    broken = []
    for target in links(path.read_text(encoding="utf-8")):
        if not target or SCHEME.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / unquote(file_part)).resolve() if file_part else path.resolve()
        if not resolved.is_relative_to(repo.resolve()):
            broken.append(f"{target}: outside the repository")
        elif not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and unquote(anchor) not in anchors(resolved.read_text("utf-8")):
            broken.append(f"{target}: no heading with anchor #{anchor} in {resolved.relative_to(repo.resolve())}")
    return broken


def named_paths(text: str) -> list[str]:
    """The repository paths a Markdown text names (prose and code): source paths, command scripts, local modules."""
    paths = [path for path in SOURCE_PATH.findall(text) if not re.search(r"[<>*]|\.\.\.", path)]
    paths += SCRIPT_COMMAND.findall(text)
    for module in MODULE_COMMAND.findall(text):
        base = module.replace(".", "/")
        paths.append(f"{base}.py|{base}/__main__.py")  # either form runs
    return list(dict.fromkeys(paths))


def missing_paths(path: Path, repo: Path = REPO) -> list[str]:
    """The paths and command targets named in the Markdown file `path` that the repository does not hold."""
    missing = []
    for named in named_paths(path.read_text(encoding="utf-8")):
        candidates = named.split("|")
        if not any((repo / candidate).exists() or (path.parent / candidate).exists() for candidate in candidates):
            missing.append(candidates[0].removesuffix(".py") if len(candidates) > 1 else named)
    return missing


def code_files() -> list[Path]:
    """The scripts, modules, tests, run files and CI, but this file (whose examples name what does not exist)."""
    sources = [*REPO.glob("*.py"), *REPO.glob("*.sh"), REPO / ".ci" / "run"]
    for folder in ("training", "tests", "benchmarks", "demo", "runs"):
        sources += [path for path in (REPO / folder).rglob("*") if path.suffix in (".py", ".sh", ".toml")]
    return [path for path in sources if path != Path(__file__).resolve()]


# --- the checker itself, against hand-written expectations


def test_slug_follows_github_rules():
    assert slug("Quick start") == "quick-start"
    assert slug("Measuring efficiency: `evaluate_efficiency.py`") == "measuring-efficiency-evaluate_efficiencypy"
    assert slug("Bad input, as refused (messages from real runs)") == "bad-input-as-refused-messages-from-real-runs"
    assert slug("SLURM and preemption") == "slurm-and-preemption"
    assert slug("uint8 batches -- and **bold** [a link](x.md)") == "uint8-batches----and-bold-a-link"


def test_repeated_headings_get_numbered_anchors_and_code_is_not_a_heading():
    text = '# Title\n## Notes\n```bash\n# not a heading\n```\n## Notes\n<a id="row-1"></a>\n'
    assert anchors(text) == {"title", "notes", "notes-1", "row-1"}


def test_links_outside_code_are_found_and_links_in_code_are_not():
    text = (
        "See [a](docs/a.md#x) and ![img](pic.png 'title'), not `[b](b.md)`.\n"
        "```\n[c](c.md)\n```\n"
        "[d]: docs/d.md\n"
        "[e](https://example.org) [f](#local)\n"
    )
    assert links(text) == ["docs/a.md#x", "pic.png", "docs/d.md", "https://example.org", "#local"]


def test_a_missing_file_a_missing_anchor_and_an_escape_are_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# Page\n## Real section\n", encoding="utf-8")
    readme = tmp_path / "README.md"
    readme.write_text(
        "[ok](docs/page.md#real-section) [self](#top) [gone](docs/none.md) [bad](docs/page.md#unreal)"
        " [out](../elsewhere.md) [web](https://example.org/x.md)\n# Top\n",
        encoding="utf-8",
    )
    assert broken_links(readme, repo=tmp_path) == [
        "docs/none.md: no such file",
        "docs/page.md#unreal: no heading with anchor #unreal in docs/page.md",
        "../elsewhere.md: outside the repository",
    ]


def test_named_paths_and_commands_are_found_in_prose_and_code():
    text = (
        "Run `python train.py` or `bash jobscript_slurm.sh --run 1`; see training/engine/loop.py and\n"
        "```bash\n.venv/bin/python benchmarks/gpu.py --quick\npython -m training.report\nsbatch job.sh\n```\n"
        "Not these: models/<id>.pth, tests/*/test_x.py, training/..., measurements/report.md, python -m pip.\n"
    )
    assert named_paths(text) == [
        "training/engine/loop.py",
        "benchmarks/gpu.py",
        "train.py",
        "jobscript_slurm.sh",
        "job.sh",
        "training/report.py|training/report/__main__.py",
    ]


def test_a_missing_script_path_and_module_are_reported(tmp_path):
    (tmp_path / "training" / "report").mkdir(parents=True)
    (tmp_path / "training" / "report" / "__main__.py").write_text("")
    (tmp_path / "train.py").write_text("")
    page = tmp_path / "README.md"
    page.write_text(
        "`python train.py`, `python predict.py`, `python -m training.report`, `python -m training.gone`, "
        "`bash training/cluster/slurm_chain.sh`, tests/cluster/test_slurm.py\n",
        encoding="utf-8",
    )
    assert missing_paths(page, repo=tmp_path) == [
        "training/cluster/slurm_chain.sh",
        "tests/cluster/test_slurm.py",
        "predict.py",
        "training/gone",
    ]


def test_flags_are_found_with_their_whole_name():
    text = "Use --data-dir, torchrun --nproc_per_node=2, `--tta none|flip` and --epochs; not a--b, --, -x or --X."
    assert FLAG.findall(text) == ["--data-dir", "--nproc_per_node", "--tta", "--epochs"]


# --- the repository's documentation


def test_readme_is_a_front_door_of_at_most_12_kib():
    size = README.stat().st_size
    assert size <= README_LIMIT_BYTES, f"README.md is {size} bytes; move detail to docs/ (limit {README_LIMIT_BYTES})"


def test_readme_states_the_test_command_that_ci_runs():
    ci_commands = [
        line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines() if line.startswith(".venv/bin/python")
    ]
    assert ci_commands == [TEST_COMMAND]
    assert TEST_COMMAND in README.read_text(encoding="utf-8")


def test_every_docs_page_is_linked_from_the_readme():
    readme_targets = {target.partition("#")[0] for target in links(README.read_text(encoding="utf-8"))}
    pages = sorted(path.relative_to(REPO).as_posix() for path in (REPO / "docs").glob("*.md"))
    assert pages, "docs/ holds no page"
    assert [page for page in pages if page not in readme_targets] == []


@pytest.mark.parametrize("page", sorted((REPO / "docs").glob("*.md")), ids=lambda path: path.name)
def test_each_docs_page_starts_with_a_title_and_a_paragraph(page: Path):
    lines = page.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("# "), f"{page.name}: first line is not a title"
    first = next(line for line in lines[1:] if line.strip())
    assert not re.match(r"\s*([#|`>*-]|\d+\.)", first), f"{page.name}: the title is not followed by a paragraph"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda path: path.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(path: Path):
    assert broken_links(path) == []


@pytest.mark.parametrize("path", markdown_files(), ids=lambda path: path.relative_to(REPO).as_posix())
def test_every_named_path_and_command_exists(path: Path):
    assert missing_paths(path) == []


def test_every_flag_named_in_the_docs_appears_in_the_code():
    """A --flag that README.md, docs/ or a folder README names is still in the code (not renamed or removed)."""
    code = "\n".join(path.read_text(encoding="utf-8") for path in code_files())
    named = {flag for path in markdown_files() for flag in FLAG.findall(path.read_text(encoding="utf-8"))}
    assert len(named) > 50, "the docs name too few flags: is the pattern right?"
    missing = [
        flag for flag in sorted(named - OTHER_TOOLS_FLAGS) if not re.search(re.escape(flag) + r"(?![\w-])", code)
    ]
    assert missing == []


def test_every_docs_page_named_in_the_code_exists():
    """A docs/<page>.md named in a script, a module, a test or a run file (help texts, comments, errors) exists."""
    named = {
        (source.relative_to(REPO).as_posix(), page)
        for source in code_files()
        for page in re.findall(r"\bdocs/([\w-]+\.md)", source.read_text(encoding="utf-8"))
    }
    assert len({source for source, _ in named}) >= 5, "the code names too few docs pages: is the pattern right?"
    assert sorted((source, page) for source, page in named if not (REPO / "docs" / page).exists()) == []
