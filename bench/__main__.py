"""Run every ``bench/*.py`` module's ``main()`` (or the ones named on the command line)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path


def main() -> int:
    here = Path(__file__).resolve().parent
    available = sorted(p.stem for p in here.glob("*.py") if not p.stem.startswith("_"))
    wanted = sys.argv[1:] or available
    unknown = [name for name in wanted if name not in available]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available)}")
        return 2
    for name in wanted:
        module = importlib.import_module(f"bench.{name}")
        print(f"== bench/{name}.py", flush=True)
        sys.argv = [f"bench/{name}.py"]  # each main() parses its own (default) arguments
        module.main()
        print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
