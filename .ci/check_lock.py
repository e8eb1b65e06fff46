"""Fails unless the venv holds exactly the locked versions: every locked package installed at its
version, and nothing else but elbox itself (a package left over in a reused venv, or one resolved
on another day, is an error here rather than a difference found later)."""

from __future__ import annotations

import argparse
import sys
from importlib import metadata


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("lock")
    parser.add_argument("--torch", default="", help="the torch requirement installed instead of the locked one")
    args = parser.parse_args()
    locked = {}
    for line in open(args.lock, encoding="utf-8"):
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            locked[canonical(name)] = version
    if args.torch.startswith("torch=="):
        locked["torch"] = args.torch.split("==", 1)[1]
    installed = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    problems = []
    for name, version in sorted(locked.items()):
        found = installed.get(name)
        if found is None:
            problems.append(f"{name}=={version} is locked but not installed")
        elif found.split("+")[0] != version.split("+")[0]:
            problems.append(f"{name}: {found} installed, {version} locked")
    extra = sorted(set(installed) - set(locked) - {"elbox"} - ({"torch"} if args.torch else set()))
    problems += [f"{name}=={installed[name]} is installed but not locked" for name in extra]
    if problems:
        print(f"the venv differs from {args.lock}:\n  " + "\n  ".join(problems), file=sys.stderr)
        print("run 'make clean' and make again (or 'make lock' to refresh the lock on purpose)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
