"""Fails when an import in criguard's src/ runs upward: every module imports only from the
levels below its own, so that the proxy core knows no layer and policy and audit borrow nothing
from each other. Reads the `crate::` paths of the code outside `#[cfg(test)]` modules (tests
may use any module to build their inputs).

    python3 tests/lib/import_direction.py [src]          check; exit 1 with each upward import
    python3 tests/lib/import_direction.py --graph [src]  print the imports between modules
"""

import collections
import os
import re
import sys

# Lowest first. A module may import from lower levels only; one level's modules not from each
# other. A file directly in src/ is its own module; a folder is one module.
LEVELS = [
    ["settings", "signal", "systemd", "glob", "cri", "allocator"],  # leaves
    ["fake"],  # the in-memory runtime, on the generated CRI types only
    ["proxy"],  # the core: sockets, HTTP/2, bodies, the method table, the core's errors
    ["client"],
    ["inventory", "telemetry"],
    ["policy", "audit"],
    ["layers"],  # the stack's layers, their refusals and codes
    ["config"],
    ["reload"],
    ["app"],
    ["cli", "demo"],
    ["main", "lib"],
]
LEVEL = {name: n for n, names in enumerate(LEVELS) for name in names}
USE = re.compile(r"\bcrate::([a-z_0-9]+)")


def module_of(src, path):
    parts = os.path.relpath(path, src).split(os.sep)
    return parts[0] if len(parts) > 1 else parts[0][: -len(".rs")]


def imports(src):
    """(module, imported module, file, line number, line) for every crate:: path."""
    for root, _, files in os.walk(src):
        for name in sorted(files):
            if not name.endswith(".rs"):
                continue
            path = os.path.join(root, name)
            text = open(path, encoding="utf-8").read()
            cut = text.find("#[cfg(test)]\nmod tests")
            if cut >= 0:
                text = text[:cut]
            module = module_of(src, path)
            for number, line in enumerate(text.split("\n"), 1):
                if line.lstrip().startswith("//"):
                    continue
                for used in USE.findall(line):
                    if used != module:
                        yield module, used, path, number, line.strip()


def main(argv):
    graph = "--graph" in argv
    args = [a for a in argv if a != "--graph"]
    src = args[0] if args else "src"
    if graph:
        edges = collections.defaultdict(set)
        for module, used, *_ in imports(src):
            edges[module].add(used)
        for module in sorted(edges, key=lambda m: (-LEVEL.get(m, 99), m)):
            print(f"{module} -> {', '.join(sorted(edges[module], key=lambda m: (-LEVEL.get(m, 99), m)))}")
        return 0
    upward = []
    for module, used, path, number, line in imports(src):
        if module not in LEVEL or used not in LEVEL:
            upward.append(f"{path}:{number}: {module} or {used} has no level in {__file__}: {line}")
        elif LEVEL[used] >= LEVEL[module]:
            upward.append(f"{path}:{number}: {module} imports {used}, which is not below it: {line}")
    for problem in upward:
        print(problem)
    if upward:
        print(f"{len(upward)} import(s) run upward; see the levels in {__file__}")
        return 1
    print(f"imports run one way: {' -> '.join('/'.join(level) for level in reversed(LEVELS))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
