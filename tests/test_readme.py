"""The README's local example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from payme_auth._config import env_settings

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


class _Recording(dict[str, str]):
    """An environment that remembers every variable asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        self.asked.add(key)
        return super().get(key, default)


def test_readme_names_every_variable_from_env_reads() -> None:
    """Each PAYME_* variable that from_env() reads is named in the README."""
    environ = _Recording()
    env_settings(environ)
    assert {"PAYME_CLIENT_ID", "PAYME_TOKEN_URL", "PAYME_API_VERSION"} <= environ.asked
    text = README.read_text(encoding="utf-8")
    missing = sorted(name for name in environ.asked if f"`{name}`" not in text)
    assert not missing, f"README.md does not name {missing}"
