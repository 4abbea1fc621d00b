"""Every "DESIGN.md §N" (or "DESIGN §N") cited in the sources, tests, scripts and docs names a section that
docs/DESIGN.md has (docs/DESIGN.md §4: comments cite the design by section number)."""

import re

import pytest
from source_tree import ROOT

DESIGN = ROOT / "docs" / "DESIGN.md"
if not DESIGN.is_file():
    pytest.skip("docs/DESIGN.md is not in this tree (an installed package is being tested)", allow_module_level=True)

SEARCHED = ("deltaconv_kernels", "csrc", "python", "tests", "benchmarks", ".ci")
SUFFIXES = {".py", ".sh", ".cpp", ".h", ".cu", ".cuh", ".def", ".md", ".txt", ".toml"}
# "DESIGN.md §2", "DESIGN §5, §8", "docs/DESIGN.md §1 kernel sizes": the section numbers after the name.
CITATION = re.compile(r"DESIGN(?:\.md)? ((?:§\d+(?:, )?)+)")


def sections() -> set[int]:
    return {int(m) for m in re.findall(r"^## (\d+)\. ", DESIGN.read_text(encoding="utf-8"), flags=re.M)}


def citations():
    files = [ROOT / "README.md", ROOT / "setup.py"]
    for folder in SEARCHED:
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in SUFFIXES and p.is_file()]
    for path in files:
        if not path.is_file():
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for group in CITATION.findall(line):
                for number in re.findall(r"§(\d+)", group):
                    yield f"{path.relative_to(ROOT)}:{n}", int(number)


def test_the_citation_pattern_reads_every_form():
    text = "a (DESIGN §5, §8) b docs/DESIGN" + ".md §10: c"  # split so that this file cites nothing itself
    found = [re.findall(r"§(\d+)", g) for g in CITATION.findall(text)]
    assert found == [["5", "8"], ["10"]]


def test_every_cited_section_exists():
    have = sections()
    assert {1, 2, 3, 4} <= have, f"docs/DESIGN.md sections found: {sorted(have)}"
    cited = list(citations())
    assert cited, "no citation found: the search is broken"
    missing = [f"{where}: §{number}" for where, number in cited if number not in have]
    assert not missing, "citations of sections docs/DESIGN.md does not have:\n" + "\n".join(missing)
