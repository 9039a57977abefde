"""The README's links and setting names stay true as the code moves on."""

import re
from pathlib import Path

from readme import anchors, github_anchor, prose_lines

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
ENV_EXAMPLE = ROOT / ".env.example"

# Names with a setting's prefix that are not settings of the job: the Compose file's
# own variables for its test server (BASE_IMAGE, KILL_SEED, ... have no such prefix).
NOT_SETTINGS = {"SFTP_TEST_IMAGE", "SFTP_TEST_PORT"}


def _settings() -> set[str]:
    names = re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), flags=re.MULTILINE)
    assert len(names) > 40, "the .env.example format changed: this test reads its NAME= lines"
    return set(names)


def test_github_anchor_follows_githubs_rules() -> None:
    assert github_anchor("Keeping, deleting or moving the server's copy") == (
        "keeping-deleting-or-moving-the-servers-copy"
    )
    assert github_anchor("Audit: is what was delivered still intact?") == "audit-is-what-was-delivered-still-intact"
    assert github_anchor("SftpIpiNoRecentSuccess") == "sftpipinorecentsuccess"


def test_every_intra_document_link_names_a_heading() -> None:
    text = README.read_text()
    headings = anchors(text)
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert links, "the README has no intra-document links: this test's pattern is wrong"
    broken = sorted({link for link in links if link not in headings})
    assert broken == [], f"links to no heading: {broken}"


def test_every_setting_the_readme_names_exists() -> None:
    settings = _settings()
    # Only names that look like ours: the first word of a setting's name, then '_'.
    prefixes = {name.split("_")[0] + "_" for name in settings}
    named = set()
    for line in prose_lines(README.read_text()):
        for code in re.findall(r"`([^`]+)`", line):
            for name in re.findall(r"\b([A-Z][A-Z0-9]*_[A-Z0-9_]*)\b", code):
                if any(name.startswith(p) for p in prefixes):
                    named.add(name.rstrip("_"))
    unknown = sorted(
        name
        for name in named - NOT_SETTINGS
        # `METRICS_*` stands for a family of settings.
        if name not in settings and not any(s.startswith(name + "_") for s in settings)
    )
    assert unknown == [], f"the README names settings .env.example does not have: {unknown}"
