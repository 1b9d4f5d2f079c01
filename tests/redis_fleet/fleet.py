"""Drive a fleet of child processes: start them, release them at once, collect their lines."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

__all__ = ["CHILD", "Fleet"]

CHILD = Path(__file__).with_name("child.py")


class Fleet:
    """*count* processes of ``child.py`` with *settings*; every wait is bounded."""

    def __init__(self, count: int, settings: dict[str, Any]) -> None:
        self._lines: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()
        self._logs: list[IO[bytes]] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        argument = json.dumps(settings)
        for index in range(count):
            log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
            self._logs.append(log)
            process = subprocess.Popen(
                [sys.executable, str(CHILD), argument],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            self.processes.append(process)
            threading.Thread(target=self._read, args=(index, process), daemon=True).start()

    def _read(self, index: int, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self._lines.put((index, json.loads(line)))

    def _collect(self, event: str, indexes: set[int], timeout: float) -> dict[int, dict[str, Any]]:
        found: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while set(found) != indexes:
            left = deadline - time.monotonic()
            try:
                index, line = self._lines.get(timeout=max(0.0, left))
            except queue.Empty:
                missing = sorted(indexes - set(found))
                raise TimeoutError(
                    f"no {event!r} line within {timeout} s from processes {missing}:\n"
                    + "\n".join(self.log(i) for i in missing)
                ) from None
            if line.get("event") == event:
                found[index] = line
        return found

    def start(self, timeout: float = 30.0) -> None:
        """Wait until every process is ready, then let them all go at once."""
        self._collect("ready", set(range(len(self.processes))), timeout)
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(b"go\n")
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.flush()

    def results(
        self, timeout: float, *, skip: frozenset[int] = frozenset()
    ) -> list[dict[str, Any]]:
        """The ``done`` line of every process not in *skip*, in process order."""
        wanted = set(range(len(self.processes))) - skip
        found = self._collect("done", wanted, timeout)
        for index in wanted:
            self.processes[index].wait(10)
        return [found[index] for index in sorted(wanted)]

    def index_of(self, pid: int) -> int:
        """The index of the process with *pid*."""
        return next(i for i, p in enumerate(self.processes) if p.pid == pid)

    def kill(self, index: int) -> None:
        """SIGKILL process *index*, as a crash would end it."""
        os.kill(self.processes[index].pid, signal.SIGKILL)
        self.processes[index].wait(10)

    def log(self, index: int) -> str:
        """What process *index* wrote on stderr so far."""
        log = self._logs[index]
        log.seek(0)
        return log.read().decode(errors="replace")

    def close(self) -> None:
        """Kill whatever still runs and drop the logs."""
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    pipe.close()
        for log in self._logs:
            log.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
