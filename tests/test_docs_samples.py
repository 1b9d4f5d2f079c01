"""The Python samples of the tutorial, the how-to guides, the errors and the security pages.

A ``python`` block preceded by ``<!-- example-local -->`` is a program: it runs in a fresh
interpreter with only the ``PAYME_*`` variables that ``payme-auth emulator`` prints, pointing
at a running emulator. A block marked ``<!-- example-local continues -->`` is appended to the
program before it. A ``text`` block preceded by ``<!-- example-output -->`` is what that
program prints (``...`` matches anything, as in doctest). Every other ``python`` block must
at least compile.
"""

from __future__ import annotations

import ast
import doctest
import os
import queue
import re
import runpy
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import attrs
import httpx
import pytest

from payme_auth.testing import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, EmulatorServer

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = [
    "tutorial.md",
    "errors.md",
    "security.md",
    *sorted(path.relative_to(DOCS).as_posix() for path in (DOCS / "howto").glob("*.md")),
]
RUN_TIMEOUT = 60.0

_FENCE = re.compile(
    r"(?:^<!-- (?P<marker>[a-z -]+) -->\n)?"
    r"^(?P<indent> *)```(?P<lang>[\w{}-]*)[^\n]*\n(?P<code>.*?)^(?P=indent)```$",
    flags=re.DOTALL | re.MULTILINE,
)


@attrs.define
class Program:
    """A runnable sample: its code and, when the page shows it, its expected output."""

    page: str
    line: int
    code: str
    output: str | None = None

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


@attrs.frozen
class Block:
    page: str
    line: int
    code: str


def _scan(page: str) -> tuple[list[Program], list[Block]]:
    text = (DOCS / page).read_text(encoding="utf-8")
    programs: list[Program] = []
    others: list[Block] = []
    for found in _FENCE.finditer(text):
        marker, lang, code = found["marker"], found["lang"], found["code"]
        line = text.count("\n", 0, found.start("code")) + 1
        if marker == "example-local" and lang == "python":
            programs.append(Program(page, line, code))
        elif marker == "example-local continues" and lang == "python":
            assert programs, f"{page}:{line}: a continued example with nothing before it"
            programs[-1].code += "\n\n" + code
        elif marker == "example-output":
            assert programs, f"{page}:{line}: an output with no example before it"
            assert programs[-1].output is None, f"{page}:{line}: two outputs for one example"
            programs[-1].output = code
        elif marker is not None:
            pytest.fail(f"{page}:{line}: unknown marker <!-- {marker} -->")
        elif lang == "python":
            others.append(Block(page, line, code))
    return programs, others


PROGRAMS = [program for page in PAGES for program in _scan(page)[0]]
BLOCKS = [block for page in PAGES for block in _scan(page)[1]]


def test_the_pages_have_samples() -> None:
    """The scan finds the runnable samples and the others (a broken pattern finds none)."""
    pages = {program.page for program in PROGRAMS}
    assert {"tutorial.md", "errors.md", "howto/trio.md", "howto/worker.md"} <= pages
    assert "howto/merchants.md" in pages
    assert len(PROGRAMS) >= 7
    assert all(program.output is not None for program in PROGRAMS if program.page != "errors.md")
    assert {block.page for block in BLOCKS} >= {"errors.md", "security.md", "howto/aiohttp.md"}


@pytest.mark.parametrize("block", BLOCKS, ids=lambda block: f"{block.page}:{block.line}")
def test_sample_compiles(block: Block) -> None:
    """A sample that is not run is at least valid Python (an excerpt may ``await``)."""
    compile(block.code, f"{block.page}:{block.line}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


@pytest.fixture(scope="module")
def emulator_server() -> Iterator[EmulatorServer]:
    """One emulator for every sample: they share nothing but the server."""
    pytest.importorskip("uvicorn")
    from payme_auth.testing import run_emulator

    with run_emulator() as server:
        yield server


def _emulator_env(server: EmulatorServer) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("PAYME_")}
    env.update(
        PAYME_TOKEN_URL=server.token_url,
        PAYME_AUDIENCE=server.audience,
        PAYME_CLIENT_ID=DEFAULT_CLIENT_ID,
        PAYME_CLIENT_SECRET=DEFAULT_CLIENT_SECRET,
    )
    return env


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda program: program.id)
def test_sample_runs(program: Program, emulator_server: EmulatorServer) -> None:
    """A runnable sample runs against the emulator and prints what the page says."""
    if "import trio" in program.code:
        pytest.importorskip("trio")
    done = subprocess.run(
        [sys.executable, "-c", program.code],
        env=_emulator_env(emulator_server),
        capture_output=True,
        text=True,
        check=False,
        timeout=RUN_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    assert DEFAULT_CLIENT_SECRET not in done.stdout + done.stderr
    if program.output is not None:
        checker = doctest.OutputChecker()
        assert checker.check_output(program.output, done.stdout, doctest.ELLIPSIS), (
            f"expected:\n{program.output}\ngot:\n{done.stdout}"
        )


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_worker_sample_stops_gracefully_on_sigterm(emulator_server: EmulatorServer) -> None:
    """Fed jobs without end, the worker sample stops on SIGTERM: it finishes the jobs in hand,
    logs its stats and exits 0."""
    (program,) = [program for program in PROGRAMS if program.page == "howto/worker.md"]
    endless = program.code.replace("in range(1, 21):", "in itertools.count(1):")
    assert endless != program.code, "the worker sample no longer reads range(1, 21)"
    lines: queue.Queue[str] = queue.Queue()
    said: list[str] = []

    def drain(stream: IO[str]) -> None:
        for line in stream:
            lines.put(line)

    with subprocess.Popen(
        [sys.executable, "-c", "import itertools\n" + endless],
        env=_emulator_env(emulator_server),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stderr is not None
        assert process.stdout is not None
        reader = threading.Thread(target=drain, args=(process.stderr,), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + RUN_TIMEOUT
            while not any("obtained token" in line for line in said):
                said.append(lines.get(timeout=max(0.0, deadline - time.monotonic())))
            process.send_signal(signal.SIGTERM)
            status = process.wait(timeout=RUN_TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            reader.join(RUN_TIMEOUT)
        out = process.stdout.read()
    while not lines.empty():
        said.append(lines.get_nowait())
    assert status == 0, "".join(said)
    log = "".join(said)
    assert "SIGTERM: finishing the jobs in hand, then stopping" in log
    assert "stopped; payme_auth" in log
    assert DEFAULT_CLIENT_SECRET not in log + out
    found = re.fullmatch(r"(\d+) jobs done with 1 token request\(s\)\n", out)
    assert found, out
    assert int(found[1]) >= 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_tutorial_web_service_runs_from_the_page_alone(
    emulator_server: EmulatorServer, tmp_path: Path
) -> None:
    """Step 7 of the tutorial works outside a checkout: the code shown, saved as the page
    says, served with the page's uvicorn command, takes a payment and reports its health."""
    pytest.importorskip("fastapi")
    text = (DOCS / "tutorial.md").read_text(encoding="utf-8")
    step = text[text.index("## 7. A web service") :]
    shown = re.search(
        r"```\{literalinclude\} (?P<path>\S+)\n(?P<options>(?::[\w-]+:.*\n)*)```", step
    )
    assert shown, "step 7 no longer includes the app"
    saved_as = re.search(r"Save it as `(\w+)\.py`", step)
    assert saved_as, "step 7 no longer says where to save the app"
    code = (DOCS / shown["path"]).read_text(encoding="utf-8")
    start = re.search(r"^:start-at: (.+)$", shown["options"], re.MULTILINE)
    if start:
        code = code[code.index(start[1]) :]
    (tmp_path / f"{saved_as[1]}.py").write_text(code, encoding="utf-8")
    [command] = re.findall(r"^\$ (uvicorn .+)$", step, re.MULTILINE)
    port = _free_port()
    argv = [sys.executable, "-m", *command.replace("--port 8000", f"--port {port}").split()]
    assert str(port) in argv, f"the page's command no longer serves on port 8000: {command}"
    env = _emulator_env(emulator_server)
    env.pop("PYTHONPATH", None)
    with subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        try:
            deadline = time.monotonic() + RUN_TIMEOUT
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                while True:
                    assert process.poll() is None, process.communicate()[0]
                    assert time.monotonic() < deadline, "the tutorial's service did not start"
                    try:
                        paid = client.post("/pay", json={"amount": "10.00"})
                        break
                    except httpx.TransportError:
                        time.sleep(0.1)
                health = client.get("/health/payme")
        finally:
            process.terminate()
            try:
                process.wait(timeout=RUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert paid.status_code == 200, paid.text
    assert paid.json()["state"] == "AUTORIZADO"
    assert health.status_code == 200, health.text


def test_the_docs_inventories_are_up_to_date() -> None:
    """The intersphinx inventories kept in docs/_inventories are what make.py writes from
    its list, and each name in them points at its project's public documentation."""
    maker = runpy.run_path(str(DOCS / "_inventories" / "make.py"))
    inventories = maker["INVENTORIES"]
    assert {"python", "httpx"} <= set(inventories)
    for stem, (project, version, names) in inventories.items():
        written = (DOCS / "_inventories" / f"{stem}.inv").read_bytes()
        assert written == maker["render"](project, version, names), (
            f"run {DOCS}/_inventories/make.py"
        )
    conf = (DOCS / "conf.py").read_text(encoding="utf-8")
    for stem in inventories:
        assert f'"_inventories/{stem}.inv"' in conf, stem
