"""Test support shared by the conformance suites: find the processes a run or a deploy left behind.

A process belongs to a run when its command line names the run's directory (every task process is started
as ``... RUN_DIR``), and to the test when it is a child of the test process.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator, List, Set, Tuple


def _processes() -> Iterator[Tuple[int, str, int, str]]:
    """(pid, state, parent pid, command line) of every process this user may read."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # it ended while we looked
            continue
        yield int(entry.name), stat[0], int(stat[1]), cmd


def processes_mentioning(text: str) -> List[str]:
    """Live processes (zombies aside) whose command line contains ``text``, as ``pid: command``."""
    me = os.getpid()
    return [f"{pid}: {cmd[:200]}" for pid, state, _, cmd in _processes() if text in cmd and state != "Z" and pid != me]


def child_pids() -> Set[int]:
    """Live (non-zombie) children of this process."""
    me = os.getpid()
    return {pid for pid, state, ppid, _ in _processes() if ppid == me and state != "Z"}


def left_behind(path: Path, children_before: Set[int], seconds: float) -> List[str]:
    """What is still alive after up to ``seconds``: processes naming ``path``, and children of this process
    started since ``children_before`` was taken. Empty when everything went away."""
    deadline = time.monotonic() + seconds
    needle = str(Path(path).resolve())
    while True:
        left = processes_mentioning(needle)
        left += [f"{pid}: a child of the test process" for pid in sorted(child_pids() - children_before)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)
