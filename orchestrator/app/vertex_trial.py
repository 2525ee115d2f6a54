"""Entry point of a Vertex tuning trial: ``python -m orchestrator.app.vertex_trial [overrides] --<param>=<value>...``.

Vertex passes the suggested parameters as ``--<parameterId>=<value>`` flags; ``--tfscale-param-key=<id>=<key>``
flags (written into the trial job spec by tfscale) map each parameter to its Hydra override key. The trial
then runs as ``tfscale <overrides> <key>=<value>...``.
"""
from __future__ import annotations

import sys
from typing import Dict, List, Optional, Sequence

from orchestrator.vertex.tuning import KEY_FLAG


def to_overrides(argv: Sequence[str]) -> List[str]:
    """Translate a trial's command line into tfscale overrides."""
    keys: Dict[str, str] = {}
    params: Dict[str, str] = {}
    overrides: List[str] = []
    for arg in argv:
        if arg.startswith(KEY_FLAG):
            name, _, key = arg[len(KEY_FLAG):].partition("=")
            keys[name] = key
        elif arg.startswith("--") and "=" in arg:
            name, _, value = arg[2:].partition("=")
            params[name] = value
        else:
            overrides.append(arg)
    for name, value in params.items():
        overrides.append(f"{keys.get(name, name)}={value}")
    return overrides


def main(argv: Optional[List[str]] = None) -> None:
    from orchestrator.app.cli import main as cli_main

    cli_main(to_overrides(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
