"""The repository stands alone: no file points a reader to a page outside it (a user has only the repository)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE = re.compile(r"\.\./shared|shared/(DESIGN|PLATFORM)|\b(DESIGN|PLATFORM)\.md\b")


def test_no_file_refers_to_a_page_outside_the_repository():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert len(files) > 100, "git ls-files found too few files"
    offending = []
    for name in files:
        path = ROOT / name
        if name == "tests/unit/test_self_contained.py" or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:  # images and other binaries
            continue
        offending += [f"{name}:{n}" for n, line in enumerate(text.splitlines(), 1) if OUTSIDE.search(line)]
    assert not offending, f"references to pages outside the repository: {offending}"
