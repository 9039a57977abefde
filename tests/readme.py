"""GitHub's view of a Markdown document: its headings' anchors, outside code blocks."""

import re


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, where '#' starts a comment, not a heading."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"\[([^]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every heading's anchor in ``markdown``, as GitHub renders it."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose_lines(markdown):
        match = re.match(r"#{1,6} (.+)", line)
        if match:
            base = github_anchor(match.group(1))
            # GitHub numbers repeated headings: name, name-1, name-2, ...
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found
