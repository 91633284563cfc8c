"""Citations stay inside the repository: every `.md` document, `§` section and invariant that a
comment in streamsync/, tests/ or scripts/ names exists in the repo, and README's and docs/'s
links point at files that exist (see docs/design.md, first paragraph)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED_DIRS = ("streamsync", "tests", "scripts")
SCANNED_SUFFIXES = {".py", ".md", ".service", ".sh", ".toml", ".txt", ".cfg", ".ini"}
SELF = Path(__file__).resolve()

# A path-like token ending in .md (no spaces, quotes, brackets or backticks).
_DOC = re.compile(r"[^\s\"'`()\[\]<>{}|*]*\.md\b")
_SECTION = re.compile(r"§\s*(\d+(?:\.\d+)*)")
# What may stand between a document and a section it cites: "docs/x.md §1, §2 and §3",
# "`docs/x.md` §9.1/§9.5".
_BETWEEN = re.compile(r"^(?:[\s,/;`]|and\b|or\b|§\s*\d+(?:\.\d+)*)*$")
_INVARIANT = re.compile(r"\binvariants?\s+(\d+(?:\s*(?:,|and|or|&)\s*\d+)*)", re.IGNORECASE)
_HEADING_NUMBER = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s", re.MULTILINE)
_HEADING_INVARIANT = re.compile(r"^#{1,6}\s+Invariant\s+(\d+)\b", re.MULTILINE)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_STANDARD = re.compile(r"\bRFC\s*\d+\s*(?:,\s*)?$")  # "RFC 7231 §7.1.3" cites a public standard
DESIGN = "docs/design.md"


@dataclass(frozen=True)
class Problem:
    """One citation that points nowhere: where it is and why."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def section_numbers(doc: Path) -> set[str]:
    """The numbers of a document's numbered headings (`## 9.`, `### 9.4 ...`)."""
    return set(_HEADING_NUMBER.findall(doc.read_text(encoding="utf-8")))


def invariant_numbers(root: Path) -> set[str]:
    """The invariants `docs/design.md` defines (`### Invariant 6. ...`)."""
    design = root / DESIGN
    if not design.is_file():
        return set()
    return set(_HEADING_INVARIANT.findall(design.read_text(encoding="utf-8")))


def _resolve(token: str, source: Path, root: Path) -> Path | None:
    """The repo file a cited document names (from the repo root or the citing file's folder),
    or None when it is not a file inside the repository."""
    cleaned = token.removeprefix("./")
    for base in (root, source.parent):
        candidate = (base / cleaned).resolve()
        if candidate.is_relative_to(root.resolve()) and candidate.is_file():
            return candidate
    return None


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def check_citations(text: str, source: Path, root: Path, *,
                    default_doc: Path | None = None) -> list[Problem]:
    """Problems with the documents, sections and invariants cited in `text` (the content of
    `source`). A `§N` belongs to the document named just before it; without one it belongs to
    `default_doc` (a document's own sections), else it is a problem."""
    problems: list[Problem] = []
    rel = source.relative_to(root) if source.is_relative_to(root) else source
    docs: list[tuple[int, int, Path | None, str]] = []  # start, end, resolved, token
    for match in _DOC.finditer(text):
        token = match.group()
        start = match.start()
        if "://" in token:
            continue  # a URL, not a repo document
        resolved = _resolve(token, source, root)
        docs.append((start, match.end(), resolved, token))
        if resolved is None:
            problems.append(Problem(f"{rel}:{_line(text, start)}",
                                    f"cites {token!r}, which is not a file in the repository"))
    for match in _SECTION.finditer(text):
        number = match.group(1).rstrip(".")
        if _STANDARD.search(text[text.rfind("\n", 0, match.start()) + 1:match.start()]):
            continue
        before = [d for d in docs if d[1] <= match.start()]
        owner: tuple[int, int, Path | None, str] | None = None
        if before and _BETWEEN.fullmatch(text[before[-1][1]:match.start()]):
            owner = before[-1]
        where = f"{rel}:{_line(text, match.start())}"
        if owner is None:
            if default_doc is None:
                problems.append(Problem(where, f"§{number} names no document (write "
                                               f"'docs/<file>.md §{number}')"))
                continue
            target, label = default_doc, str(default_doc.relative_to(root))
        else:
            if owner[2] is None:
                continue  # the missing document is reported already
            target, label = owner[2], owner[3]
        if number not in section_numbers(target):
            problems.append(Problem(where, f"{label} has no section §{number}"))
    defined = invariant_numbers(root)
    for match in _INVARIANT.finditer(text):
        for number in re.findall(r"\d+", match.group(1)):
            if number not in defined:
                problems.append(Problem(f"{rel}:{_line(text, match.start())}",
                                        f"invariant {number} is not defined in {DESIGN}"))
    return problems


def check_links(doc: Path, root: Path) -> list[Problem]:
    """Markdown links of `doc` to local files that do not exist."""
    problems: list[Problem] = []
    text = doc.read_text(encoding="utf-8")
    for match in _LINK.finditer(text):
        target = match.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http:, https:, mailto: or an anchor in the same file
        path = target.split("#", 1)[0]
        resolved = (doc.parent / path).resolve()
        if not (resolved.is_relative_to(root.resolve()) and resolved.exists()):
            problems.append(Problem(f"{doc.relative_to(root)}:{_line(text, match.start())}",
                                    f"links to {target!r}, which does not exist"))
    return problems


def scanned_files(root: Path) -> list[Path]:
    """Source, test, script and documentation text under streamsync/, tests/ and scripts/."""
    out = []
    for top in SCANNED_DIRS:
        for path in sorted((root / top).rglob("*")):
            if (path.is_file() and path.suffix in SCANNED_SUFFIXES
                    and "__pycache__" not in path.parts and path.resolve() != SELF):
                out.append(path)
    return out


def repo_problems(root: Path) -> list[Problem]:
    """Every broken citation and link of the repository at `root`."""
    problems: list[Problem] = []
    for path in scanned_files(root):
        problems += check_citations(path.read_text(encoding="utf-8", errors="replace"), path,
                                    root)
    for doc in sorted((root / "docs").glob("*.md")):
        problems += check_citations(doc.read_text(encoding="utf-8"), doc, root, default_doc=doc)
        problems += check_links(doc, root)
    problems += check_links(root / "README.md", root)
    return problems


# ---- the repository ---------------------------------------------------------------------------


def test_every_citation_and_link_in_the_repository_resolves() -> None:
    problems = repo_problems(ROOT)
    assert problems == [], "\n".join(str(p) for p in problems)


def test_the_design_defines_the_invariants_code_has_always_cited() -> None:
    assert {str(n) for n in range(1, 8)} <= invariant_numbers(ROOT)


def test_readme_points_to_the_design() -> None:
    links = _LINK.findall((ROOT / "README.md").read_text(encoding="utf-8"))
    assert "docs/design.md" in links


# ---- the checker itself -----------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A tiny repository: docs with numbered sections and two invariants, a README."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "facts.md").write_text(
        "# Facts\n\n## 1. One\n\n### 1.2 Sub\n\n## 9. Nine\n\n### 9.4 Four\n", encoding="utf-8")
    (tmp_path / "docs" / "design.md").write_text(
        "# Design\n\n## 2. Invariants\n\n### Invariant 1. A\n\n### Invariant 6. B\n\n"
        "See [facts](facts.md) and `docs/facts.md` §9.4.\n", encoding="utf-8")
    (tmp_path / "README.md").write_text("[design](docs/design.md)\n", encoding="utf-8")
    for top in SCANNED_DIRS:
        (tmp_path / top).mkdir()
    return tmp_path


def _write(repo: Path, text: str) -> Path:
    path = repo / "streamsync" / "mod.py"
    path.write_text(text, encoding="utf-8")
    return path


def _problems(repo: Path, text: str) -> list[str]:
    _write(repo, text)
    return [p.message for p in repo_problems(repo)]


def test_checker_accepts_citations_into_the_repo(repo: Path) -> None:
    text = ('"""Keyset pages (docs/facts.md §9.4, §1.2 and §9; docs/design.md invariant 6).\n'
            'See `docs/facts.md` §1/§9.4 and invariants 1 and 6; https://example.com/x.md."""\n')
    assert _problems(repo, text) == []


def test_checker_accepts_a_section_of_a_public_standard(repo: Path) -> None:
    assert _problems(repo, "# an HTTP date (RFC 7231 §7.1.1.1) or delta-seconds\n") == []


def test_checker_reports_a_document_outside_the_repo(repo: Path) -> None:
    (repo.parent / "outside.md").write_text("## 1. x\n", encoding="utf-8")
    # The design document outside the repo, spelt in pieces so this file cites nothing itself.
    outside_design = "DESIGN" + ".md"
    text = f"# see ../outside.md §1 and {outside_design}\n"
    messages = _problems(repo, text)
    assert any("'../outside.md'" in m for m in messages)
    assert any(f"'{outside_design}'" in m for m in messages)


def test_checker_reports_a_missing_section(repo: Path) -> None:
    assert _problems(repo, "# docs/facts.md §9.3\n") == ["docs/facts.md has no section §9.3"]


def test_checker_reports_a_section_without_a_document(repo: Path) -> None:
    messages = _problems(repo, "# as in §2.5.1 of the notes\n")
    assert messages == ["§2.5.1 names no document (write 'docs/<file>.md §2.5.1')"]


def test_checker_reports_an_undefined_invariant(repo: Path) -> None:
    assert _problems(repo, "# keeps invariants 1 and 7\n") == [
        "invariant 7 is not defined in docs/design.md"]


def test_checker_reports_a_missing_section_cited_inside_docs(repo: Path) -> None:
    design = repo / "docs" / "design.md"
    design.write_text(design.read_text(encoding="utf-8") + "Also §3 here.\n", encoding="utf-8")
    assert [p.message for p in repo_problems(repo)] == ["docs/design.md has no section §3"]


def test_checker_reports_a_broken_readme_link(repo: Path) -> None:
    (repo / "README.md").write_text(
        "[design](docs/design.md) [gone](docs/gone.md#top) [web](https://x.org/a.md)\n",
        encoding="utf-8")
    assert [p.message for p in repo_problems(repo)] == [
        "links to 'docs/gone.md#top', which does not exist"]
