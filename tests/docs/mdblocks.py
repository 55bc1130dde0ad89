"""Find the fenced code blocks of the README and docs/ that the docs tests run.

A block is found by a line it contains (``block_with``): the tests run what the page says, with
only the substitutions each test names (the hub's real URL and tokens for the placeholders), so
a page edited without its test, or the other way round, fails.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^( *)```(\w*)\s*$")  # a fence may be indented (inside a list item)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    def substitute(self, replacements: dict[str, str], *, strict: bool = True) -> str:
        """The block with each placeholder replaced; a placeholder the block lacks is an error
        (unless not ``strict``: a mapping of paths, say, that a block may or may not use)."""
        text = self.text
        for old, new in replacements.items():
            assert old in text or not strict, f"{self.where()}: the block no longer contains {old!r}; update its test"
            text = text.replace(old, new)
        return text


def blocks(page: str) -> list[Block]:
    path = ROOT / page
    found, lang, start, lines, indent = [], None, 0, [], 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        match = FENCE.match(line)
        if lang is None and match:
            indent, lang, start, lines = len(match.group(1)), match.group(2), number, []
        elif lang is not None and line.strip() == "```":
            found.append(Block(path, start, lang, "\n".join(lines) + "\n"))
            lang = None
        elif lang is not None:
            lines.append(line[indent:] if line[:indent].isspace() else line)
    return found


def block_with(page: str, needle: str, *, lang: str | tuple[str, ...] = ("sh", "bash", "")) -> Block:
    """The one fenced block of ``page`` (a path from the repository root) containing ``needle``."""
    langs = (lang,) if isinstance(lang, str) else lang
    matches = [b for b in blocks(page) if needle in b.text and b.lang in langs]
    assert len(matches) == 1, (f"{page}: expected exactly one {'/'.join(l or 'plain' for l in langs)} block "
                               f"containing {needle!r}, found {len(matches)}; the docs changed, update the test")
    return matches[0]


def commands(text: str) -> list[tuple[str, list[str]]]:
    """Split a shell block into steps: (command with its continuation lines, the comment lines that
    follow it, without their '# ' — the output the page shows for it)."""
    steps: list[tuple[str, list[str]]] = []
    pending: list[str] = []
    for line in text.splitlines():
        if pending:
            pending.append(line)
            if not line.rstrip().endswith("\\"):
                steps.append(("\n".join(pending), []))
                pending = []
            continue
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            if steps:
                steps[-1][1].append(stripped[1:].strip())
            continue
        if line.rstrip().endswith("\\"):
            pending = [line]
        else:
            steps.append((line, []))
    if pending:
        steps.append(("\n".join(pending), []))
    return steps


def table_after(block: Block) -> list[list[str]]:
    """The rows (cells stripped, header and rule left out) of the first table after ``block``."""
    lines = block.path.read_text().splitlines()[block.line:]
    end = next(i for i, line in enumerate(lines) if line.strip() == "```")
    rows: list[list[str]] = []
    for line in lines[end + 1:]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows or line.startswith("```"):
            break
    assert len(rows) > 2, f"{block.where()}: no table follows this block"
    return rows[2:]
