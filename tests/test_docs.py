"""The documentation that is generated from the code is current."""

from __future__ import annotations

import re
from pathlib import Path

from scripts import env_table

REPO = Path(__file__).resolve().parent.parent


def test_readme_lists_every_environment_variable() -> None:
    readme = (REPO / "README.md").read_text()
    assert env_table.table() in readme, "README is stale: run `python scripts/env_table.py README.md`"


def test_every_make_target_has_help() -> None:
    makefile = (REPO / "Makefile").read_text()
    phony = set(re.search(r"\.PHONY:(.*?)\n\n", makefile, re.S).group(1).replace("\\", " ").split())  # type: ignore[union-attr]
    documented = set(re.findall(r"^([a-zA-Z_-]+):.*?## ", makefile, re.M))
    assert phony <= documented, f"targets without a ## help line: {sorted(phony - documented)}"
