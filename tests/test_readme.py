"""The README's and docs/'s links, setting names, test names and commands stay true as the code moves on."""

import re
import shlex
import sys
from pathlib import Path

import pytest
from readme import anchors, github_anchor, prose_lines

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
ENV_EXAMPLE = ROOT / ".env.example"
# Every page the checks read: the README and every Markdown file under docs/.
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
PAGE_IDS = [str(page.relative_to(ROOT)) for page in PAGES]
# The front door stays short: depth belongs in docs/.
README_MAX_LINES = 500

sys.path.insert(0, str(ROOT / "tools"))

# Names with a setting's prefix that are not settings of the job: the Compose file's
# own variables for its test server (BASE_IMAGE, KILL_SEED, ... have no such prefix).
NOT_SETTINGS = {"SFTP_TEST_IMAGE", "SFTP_TEST_PORT"}


def _settings() -> set[str]:
    names = re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), flags=re.MULTILINE)
    assert len(names) > 40, "the .env.example format changed: this test reads its NAME= lines"
    return set(names)


def _links(text: str) -> list[str]:
    """Every inline link target outside code blocks and code spans."""
    found = []
    for line in prose_lines(text):
        found.extend(re.findall(r"\]\(([^)\s]+)\)", re.sub(r"`[^`]*`", "", line)))
    return found


def _code_spans(text: str) -> list[str]:
    return [code for line in prose_lines(text) for code in re.findall(r"`([^`]+)`", line)]


def _fenced(text: str) -> list[str]:
    prose = set(prose_lines(text))
    return [line for line in text.splitlines() if line not in prose and not line.lstrip().startswith("```")]


def test_github_anchor_follows_githubs_rules() -> None:
    assert github_anchor("Keeping, deleting or moving the server's copy") == (
        "keeping-deleting-or-moving-the-servers-copy"
    )
    assert github_anchor("Audit: is what was delivered still intact?") == "audit-is-what-was-delivered-still-intact"
    assert github_anchor("SftpIpiNoRecentSuccess") == "sftpipinorecentsuccess"
    assert github_anchor("Day-2 commands") == "day-2-commands"


def test_the_checks_read_the_readme_and_the_docs_pages() -> None:
    names = {page.name for page in PAGES}
    assert {"README.md", "configuration.md", "deployment.md", "operations.md", "design.md", "servers.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_intra_document_link_names_a_heading(page: Path) -> None:
    text = page.read_text()
    headings = anchors(text)
    links = [link[1:] for link in _links(text) if link.startswith("#")]
    broken = sorted({link for link in links if link not in headings})
    assert broken == [], f"{page.name}: links to no heading: {broken}"


def test_the_readme_has_intra_document_links() -> None:
    assert any(link.startswith("#") for link in _links(README.read_text())), "this test's pattern is wrong"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_relative_link_and_its_anchor_resolve(page: Path) -> None:
    """A link to a file names one in the repository; a link to a heading of another page names one of its headings."""
    broken = []
    for link in _links(page.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", link) or link.startswith("#"):
            continue  # a URL, or this page's own heading (checked above)
        path, _, fragment = link.partition("#")
        target = (page.parent / path).resolve()
        if not target.is_relative_to(ROOT) or not target.exists():
            broken.append(f"{link}: no such file in the repository")
        elif fragment and (target.suffix != ".md" or fragment not in anchors(target.read_text())):
            broken.append(f"{link}: {target.name} has no heading #{fragment}")
    assert broken == [], f"{page.name}: {broken}"


def test_the_readme_links_every_docs_page() -> None:
    links = {link.partition("#")[0] for link in _links(README.read_text())}
    pages = {
        f"docs/{page.name}" for page in PAGES if page.parent == ROOT / "docs" and not page.name.startswith("pending-")
    }
    assert pages - links == set(), "the README's map misses a page"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_setting_the_page_names_exists(page: Path) -> None:
    settings = _settings()
    # Only names that look like ours: the first word of a setting's name, then '_'.
    prefixes = {name.split("_")[0] + "_" for name in settings}
    named = set()
    for code in _code_spans(page.read_text()):
        for name in re.findall(r"\b([A-Z][A-Z0-9]*_[A-Z0-9_]*)\b", code):
            if any(name.startswith(p) for p in prefixes):
                named.add(name.rstrip("_"))
    unknown = sorted(
        name
        for name in named - NOT_SETTINGS
        # `METRICS_*` stands for a family of settings.
        if name not in settings and not any(s.startswith(name + "_") for s in settings)
    )
    assert unknown == [], f"{page.name} names settings .env.example does not have: {unknown}"


def _test_functions() -> dict[str, set[str]]:
    return {
        path.name: set(re.findall(r"^(?:async )?def (test_\w+)", path.read_text(), flags=re.MULTILINE))
        for path in (ROOT / "tests").glob("test_*.py")
    }


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_test_the_page_cites_exists(page: Path) -> None:
    """The tables of faults and servers cite tests as their proof: each must be a real test."""
    functions = _test_functions()
    everywhere = set().union(*functions.values())
    missing = []
    for code in _code_spans(page.read_text()):
        for module, name in re.findall(r"\b(test_\w+\.py)(?:::(test_\w+))?", code):
            if module not in functions:
                missing.append(module)
            elif name and name not in functions[module]:
                missing.append(f"{module}::{name}")
        # A bare test name continues a list that named its module before it.
        if re.fullmatch(r"test_\w+", code) and code not in everywhere:
            missing.append(code)
    assert missing == [], f"{page.name} cites tests that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_repository_path_the_page_names_exists(page: Path) -> None:
    missing = [
        code
        for code in _code_spans(page.read_text())
        if re.fullmatch(r"(app|tests|tools|bench|deploy|docs)/[\w./@-]+", code) and not (ROOT / code).exists()
    ]
    assert missing == [], f"{page.name} names paths the repository does not have: {missing}"


def _make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.MULTILINE))


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_make_target_the_page_names_exists(page: Path) -> None:
    text = page.read_text()
    cited = set()
    for line in _code_spans(text) + _fenced(text):
        cited.update(re.findall(r"(?:^|[\s;&(])make ([a-z][\w-]*)", line))
    if page == README:
        assert cited, "this test's pattern is wrong: the README names make targets"
    assert cited - _make_targets() == set(), f"{page.name} names make targets the Makefile lacks"


def test_the_readme_is_a_front_door_that_starts_with_make_demo_and_make_test() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"the README has {len(lines)} lines: move depth to docs/"
    first = lines.index("```sh")
    commands = [line.split("#")[0].strip() for line in lines[first + 1 : lines.index("```", first)]]
    assert commands == ["make demo", "make test"]
    assert {"demo", "test"} <= _make_targets()
    headings = anchors(README.read_text())
    assert {"your-first-deployment", "day-2", "documentation"} <= headings


def test_a_service_venv_is_made_with_an_interpreter_the_service_user_can_read() -> None:
    deployment = (ROOT / "docs" / "deployment.md").read_text()
    assert "/usr/bin/python3 -m venv /opt/sftp-ipi" in deployment
    assert "exit 126" in deployment and "/root" in deployment
    assert "/usr/bin/python3 -m venv" in README.read_text()
    assert not re.search(r"^(?!/usr/bin/)\S*python3 -m venv /opt", deployment, flags=re.MULTILINE)


def test_the_configuration_reference_is_generated_from_the_settings() -> None:
    from config_doc import PAGE, render

    from app.config import setting_docs

    text = PAGE.read_text()
    assert text == render(text), "run `make config-doc` (or `make env-example`) and commit the result"
    for doc in setting_docs():
        assert f"| `{doc.env}` |" in text


def _commands_cited(text: str) -> list[str]:
    """The job's command lines a page shows: `sftp-ipi ...` in prose, and the job's path in code blocks."""
    cited = [code for code in _code_spans(text) if code.startswith("sftp-ipi ")]
    for line in (line.strip() for line in _fenced(text)):
        if "/opt/sftp-ipi/bin/sftp-ipi" in line:
            cited.append("sftp-ipi" + line.rsplit("/opt/sftp-ipi/bin/sftp-ipi", 1)[1])
        elif line.startswith("sftp-ipi "):
            cited.append(line)
    # The shell's part ends the job's arguments: a comment, a redirection, a pipe.
    return [re.split(r"\s(?:#|2>|\||;|&&)", command)[0] for command in cited]


def _words(command: str) -> list[str]:
    """A command line's arguments as a shell splits them: the stuck-file command the job
    prints quotes its reason (`--reason 'failed 3 runs ...'`)."""
    try:
        return shlex.split(command)
    except ValueError:  # an unbalanced quote: a fragment of prose, taken word by word
        return command.split()


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_command_line_the_page_shows_is_one_the_job_accepts(
    page: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.__main__ import parse_args

    refused = []
    for command in _commands_cited(page.read_text()):
        if re.search(r"[\[\]<>]|\b[A-Z]{4,}\b(?!=)", command.replace("NAME", "x.IPI")):
            continue  # a synopsis (`[run]`, `COMMAND`), not a command line
        try:
            parse_args(_words(command)[1:])
        except SystemExit as stop:
            if stop.code:
                refused.append(command)
    capsys.readouterr()
    assert refused == [], f"{page.name} shows command lines the job refuses: {refused}"


def test_the_readme_shows_command_lines() -> None:
    assert len(_commands_cited(README.read_text())) > 5, "this test's pattern is wrong"
