"""``python -m orchestrator.serving [serving overrides]`` runs the embedded server (``tfscale serve``);
``python -m orchestrator.serving rollback ...`` runs ``tfscale rollback``."""
import sys

from orchestrator.serving.cli import main, rollback_main

if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["rollback"]:
        sys.exit(rollback_main(args[1:]))
    if args[:1] == ["serve"]:
        args = args[1:]
    sys.exit(main(args))
