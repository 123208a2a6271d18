"""The package order, enforced: every import in tlscale/ (module level and inside functions, read with ast)
points down this list or stays in its own package, and no two modules import each other, even indirectly.
The README's architecture section shows the same order."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "tlscale"

# Bottom to top. A package may import from those before it, never after.
ORDER = ["errors", "registry", "files", "logs", "run_folder", "spec", "data", "models", "eval", "strategies",
         "tasks", "distributed", "training", "inference", "fewshot", "runners", "service", "ladder", "cli"]
TOP = {"__init__", "__main__"}  # the public API facade and `python -m tlscale`: above everything


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported tlscale module) for every import statement in the file, wherever it is."""
    found = []
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("tlscale")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.startswith("tlscale"):
                found.append((node.lineno, base))
                found += [(node.lineno, f"{base}.{a.name}") for a in node.names if _is_module(f"{base}.{a.name}")]
    return found


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def layer(module: str) -> tuple[int, str]:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in TOP:
        return len(ORDER), "tlscale"
    return ORDER.index(parts[1]), parts[1]


def files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_package_is_in_the_order():
    named = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in PACKAGE.iterdir()
             if p.suffix == ".py" or (p / "__init__.py").is_file()}
    assert named - TOP <= set(ORDER), f"add {sorted(named - TOP - set(ORDER))} to ORDER (and the README)"


def test_no_import_points_up_the_order():
    upward = []
    for path in files():
        mine, my_package = layer(module_name(path))
        for line, target in imports(path):
            theirs, their_package = layer(target)
            if theirs > mine or (theirs == mine and their_package != my_package):
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} "
                              f"({my_package} is below {their_package})")
    assert not upward, "imports pointing up the package order:\n" + "\n".join(upward)


def test_no_import_cycles_between_modules():
    graph: dict[str, set[str]] = {}
    for path in files():
        name = module_name(path)
        graph.setdefault(name, set())
        for _, target in imports(path):
            if target != name and _is_module(target) and not name.startswith(target + "."):
                graph[name].add(target)  # (a package's own modules importing its __init__ is how Python loads)
    cycles = [sorted(c) for c in _strongly_connected(graph) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative."""
    index, low, on_stack, stack, result, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                result.append(component)
    return result
