"""The README and docs pages stay true to the repository: the tests the Guarantees page cites exist, and
the README's relative links lead to files. (``make docs`` checks the pages' own links, with -W.)"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _test_names(path: Path) -> set[str]:
    return set(re.findall(r"^(?:async )?def (test_\w+)", path.read_text(), flags=re.M))


def test_every_test_the_guarantees_page_cites_exists() -> None:
    """``test_x.py::test_y`` names a file and a test in it; a bare ``::test_z`` is in the last file named."""
    text = (ROOT / "docs" / "guarantees.md").read_text()
    cited: list[tuple[str, str]] = []
    current = None
    for file, name in re.findall(r"(test_\w+\.py)?::(test_\w+)", text):
        current = file or current
        assert current is not None, f"::{name} cited before any test file"
        cited.append((current, name))
    assert len(cited) >= 15  # the page cites each guarantee's tests; a parse that finds few is broken
    missing = [f"{f}::{n}" for f, n in cited if n not in _test_names(ROOT / "tests" / f)]
    assert not missing, f"docs/guarantees.md cites tests that do not exist: {missing}"
    # the files cited without a test name (the fuzz test, the manifest confinement tests) exist too
    for file in re.findall(r"`(test_\w+\.py)`", text):
        assert (ROOT / "tests" / file).is_file(), file


def test_readme_links_lead_to_files() -> None:
    text = (ROOT / "README.md").read_text()
    links = [t for t in re.findall(r"\]\(([^)#]+)\)", text) if "://" not in t]
    assert "docs/guarantees.md" in links and "experiments/README.md" in links
    missing = [t for t in links if not (ROOT / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
