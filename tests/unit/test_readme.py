"""The README's module table ("How it works") names every module of the package, and only modules that exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "synalign_ray"


def _table_rows() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## How it works", 1)[1]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("## "):
            break
        if line.startswith("| ") and not line.startswith("| ---") and not line.startswith("| step"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


def _named_files() -> tuple[set[Path], list[str]]:
    """Every `.py` the table names, resolved against its row's package folders (then the package root); and the
    names that resolve nowhere."""
    found, missing = set(), []
    for row in _table_rows():
        folders = [ROOT / d for d in re.findall(r"`(synalign_ray/[\w/]*/)`", row[1])] + [PACKAGE]
        for name in re.findall(r"`([\w/.]+\.py)`", " ".join(row[1:])):
            candidates = [ROOT / name] if "/" in name else [d / name for d in folders]
            hit = next((c for c in candidates if c.is_file()), None)
            if hit is None:
                missing.append(name)
            else:
                found.add(hit.resolve())
    return found, missing


def test_module_table_matches_the_package_tree():
    found, missing = _named_files()
    modules = {p.resolve() for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    assert not missing, f"the README's module table names files that do not exist: {missing}"
    unnamed = sorted(str(p.relative_to(ROOT)) for p in modules - found)
    assert not unnamed, f"modules missing from the README's module table: {unnamed}"
