"""The plan of the house, checked on every test run so it cannot rot.

The import contracts live in ``pyproject.toml`` (``[tool.importlinter]``): the orchestrator's layers, ``tuners``
as a pure library, ``strategies`` knowing only the orchestrator's error types, no import cycles. The other
tests here hold the "one home per concern" rules that an import graph cannot see: one module renames
artifacts into place, one starts processes, one writes the run record.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List, Tuple

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("orchestrator", "strategies", "tuners", "hydra_plugins")
RUN_RECORD_FILES = ("config.resolved.yaml", "provenance.json", "metrics.json", "epochs.jsonl", "status.json")


def _modules() -> Iterator[Tuple[str, ast.AST]]:
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            yield rel, ast.parse(path.read_text(), filename=rel)


def _calls(tree: ast.AST) -> Iterator[ast.Call]:
    return (node for node in ast.walk(tree) if isinstance(node, ast.Call))


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Name):
        return node.id
    return ""


def test_import_contracts_hold():
    linter = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(linter), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_one_module_renames_artifacts_into_place():
    found: List[str] = []
    for rel, tree in _modules():
        for call in _calls(tree):
            func = call.func
            path_method = (isinstance(func, ast.Attribute) and func.attr in ("rename", "replace") and len(call.args) == 1
                           and not call.keywords)  # Path.rename(target); str.replace takes two arguments
            if _dotted(func) in ("os.rename", "os.replace", "shutil.move") or path_method:
                found.append(rel)
    # tuners is a library that imports nothing of the orchestrator: its study report pages have their one
    # atomic write of their own (a browser reloading study.html never reads half of it).
    assert sorted(set(found)) == ["orchestrator/artifacts/publish.py", "tuners/results.py"], found
    assert found.count("tuners/results.py") == 1, found


def test_one_module_starts_processes():
    starters = {"subprocess", "multiprocessing", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawnv", "os.execv",
                "os.execvp", "os.execve", "os.system", "os.popen"}
    # The strategy conformance suite is test support, not something tfscale runs: it builds a strategy in the
    # fresh task processes a test needs, and the layering keeps strategies from reaching the supervisor.
    found: List[str] = []
    for rel, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] in starters for a in node.names):
                found.append(rel)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in starters:
                found.append(rel)
            elif isinstance(node, ast.Call) and _dotted(node.func) in starters:
                found.append(rel)
    assert sorted(set(found)) == ["orchestrator/runtime/supervisor.py"], sorted(set(found))


def test_one_module_writes_the_run_record():
    """Only the run-record writer names the run record's files in a write; others may read them."""
    writers = {"write_text", "write_bytes", "write_json", "open", "dump", "publish_file", "write_atomic"}
    found: List[str] = []
    for rel, tree in _modules():
        for call in _calls(tree):
            name = call.func.attr if isinstance(call.func, ast.Attribute) else _dotted(call.func)
            if name not in writers:
                continue
            text = ast.unparse(call)
            if not any(f in text for f in RUN_RECORD_FILES):
                continue
            if name == "open" and not any(isinstance(a, ast.Constant) and isinstance(a.value, str) and set(a.value) & set("wax")
                                          for a in call.args[1:2]):
                continue  # opened for reading
            found.append(rel)
    assert sorted(set(found)) in ([], ["orchestrator/artifacts/run_record.py"]), sorted(set(found))
