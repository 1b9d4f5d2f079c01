"""The README's local example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _block(marker: str) -> str:
    text = README.read_text(encoding="utf-8")
    found = re.search(
        rf"<!-- {marker} -->\n```python\n(.*?)```\n<!-- /{marker} -->", text, flags=re.DOTALL
    )
    assert found, f"README.md has no python block between <!-- {marker} --> markers"
    return found.group(1)


def test_readme_local_example_runs() -> None:
    """The quickstart against the local emulator prints a successful charge."""
    done = subprocess.run(
        [sys.executable, "-c", _block("example-local")],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "200 True\n"
