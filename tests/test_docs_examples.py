"""The examples in docs/*.md marked for testing run as written.

A block is marked with ``<!-- doc-test: NAME -->`` on the line before its fence (like the
README's ``readme-test`` blocks, which tests/test_readme.py runs). Python blocks run in a fresh
interpreter in an empty folder and must exit 0.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).parents[1] / "docs"
_MARKED = re.compile(r"<!-- doc-test: ([\w-]+) -->\n```(\w*)\n(.*?)```", flags=re.S)


def blocks() -> list[tuple[str, str, str]]:
    """``(id, language, code)`` of every marked block of every page in docs/."""
    found = []
    for page in sorted(DOCS.glob("*.md")):
        for name, lang, code in _MARKED.findall(page.read_text()):
            found.append((f"{page.name}:{name}", lang, code))
    return found


def test_methods_page_has_its_example():
    assert "methods.md:variable-attrs" in {b[0] for b in blocks()}


@pytest.mark.parametrize(("ident", "lang", "code"), blocks(), ids=[b[0] for b in blocks()])
def test_marked_doc_block_runs(ident, lang, code, tmp_path):
    assert lang == "python", f"{ident}: only python blocks can be marked for testing"
    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (ident, proc.stderr[-4000:])
    assert proc.stdout.strip()
