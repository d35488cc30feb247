"""The import graph of deeplab_tf, read from the source with ``ast``: no cycles; models/ stays
below the converter, training, inference, export and the CRF; the CRF does not import the
models; library code does not import the command line.

Every ``import`` statement counts, at module level and inside functions (a function-level
import that closes a cycle is a cycle that only shows at run time), relative or absolute;
``from deeplab_tf.x import y`` is an edge to ``deeplab_tf.x.y`` when ``y`` is a submodule,
else to ``deeplab_tf.x``. Importing a submodule runs its parent packages' ``__init__`` too;
those implicit edges are left out (every module would otherwise import ``deeplab_tf``).
"""

from __future__ import annotations

import ast
import os

import pytest

PACKAGE = "deeplab_tf"
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), PACKAGE)

#: models/ may not import these (they all build on models).
MODELS_MAY_NOT_IMPORT = ("convert", "training", "inference", "export", "crf")


def module_files(root: str, package: str = PACKAGE) -> dict[str, str]:
    """``{dotted module name: file}`` of every ``.py`` file below ``root`` (the package)."""
    modules = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        rel = os.path.relpath(folder, root)
        parts = [package] + ([] if rel == "." else rel.split(os.sep))
        for f in sorted(files):
            if not f.endswith(".py"):
                continue
            name = parts if f == "__init__.py" else [*parts, f[:-3]]
            modules[".".join(name)] = os.path.join(folder, f)
    return modules


def _imported(node, module: str, is_package: bool, modules) -> list[tuple[str, int]]:
    """``(target module, line)`` for each module of ``modules`` that an import node names
    (imports of anything else, the standard library or third parties, are dropped)."""
    targets = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            targets.append(alias.name)
    else:
        if node.level:
            base = module.split(".")
            base = base if is_package else base[:-1]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        for alias in node.names:
            sub = f"{source}.{alias.name}"
            targets.append(sub if sub in modules else source)
    found = []
    for target in targets:
        # ``import deeplab_tf.a.b`` names deeplab_tf.a.b (or its closest existing parent)
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target:
            found.append((target, node.lineno))
    return found


def import_graph(root: str = ROOT, package: str = PACKAGE) -> dict[str, dict[str, int]]:
    """``{module: {imported package module: first line}}`` for every module below ``root``,
    counting imports at every level (module, class, function, ``if``/``try`` blocks)."""
    modules = module_files(root, package)
    graph = {}
    for module, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
        edges: dict[str, int] = {}
        is_package = os.path.basename(path) == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target, line in _imported(node, module, is_package, modules):
                    if target != module:
                        edges.setdefault(target, line)
        graph[module] = edges
    return graph


def find_cycles(graph) -> list[list[str]]:
    """One cycle (as a path ``a -> b -> ... -> a``) per strongly connected component that
    has one (Tarjan's algorithm, then a shortest cycle through the component's first node)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []
    counter = [0]

    def strongconnect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_shortest_cycle(graph, c[0], set(c)) for c in components]


def _shortest_cycle(graph, start, members) -> list[str]:
    """A shortest path ``start -> ... -> start`` inside ``members`` (breadth first)."""
    parent, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, ())):
                if w == start:
                    path = [v]
                    while parent[path[-1]] is not None:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if w in members and w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # a strongly connected component has one


def _describe(cycle, graph) -> str:
    hops = [f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return " -> ".join([*hops, cycle[-1]])


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def edges_between(graph, sources, targets) -> list[str]:
    """``"a (line n) imports b"`` for each edge from a module below one of ``sources`` to a
    module below one of ``targets`` (dotted package or module names)."""
    bad = []
    for module, edges in sorted(graph.items()):
        if not any(_within(module, s) for s in sources):
            continue
        for target, line in sorted(edges.items()):
            if any(_within(target, t) for t in targets):
                bad.append(f"{module} (line {line}) imports {target}")
    return bad


def layering_violations(graph, package: str = PACKAGE) -> list[str]:
    """Edges from ``package.models`` into the packages built on top of it."""
    forbidden = [f"{package}.{p}" for p in MODELS_MAY_NOT_IMPORT]
    return edges_between(graph, [f"{package}.models"], forbidden)


def is_command_module(module: str, package: str = PACKAGE) -> bool:
    """The command line: ``package.cli``, ``package.__main__`` and every ``*.cli`` module."""
    return module.rpartition(".")[2] in ("cli", "__main__")


def command_line_imports(graph, package: str = PACKAGE) -> list[str]:
    """Edges from library modules (not :func:`is_command_module`) to command-line modules."""
    return [
        f"{module} (line {line}) imports {target}"
        for module, edges in sorted(graph.items())
        if not is_command_module(module, package)
        for target, line in sorted(edges.items())
        if is_command_module(target, package)
    ]


def test_graph_sees_the_package():
    graph = import_graph()
    assert f"{PACKAGE}.models.deeplab" in graph
    assert f"{PACKAGE}.layers" in graph[f"{PACKAGE}.models.blocks"]


def test_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles among deeplab_tf modules:\n" + "\n".join(
        _describe(c, graph) for c in cycles
    )


def test_models_do_not_import_the_layers_above():
    bad = layering_violations(import_graph())
    assert not bad, "deeplab_tf.models imports packages built on it:\n" + "\n".join(bad)


def test_crf_does_not_import_the_models():
    # CRF presets are handed in (deeplab_tf.crf.presets), not looked up in the model registry
    bad = edges_between(import_graph(), [f"{PACKAGE}.crf"], [f"{PACKAGE}.models"])
    assert not bad, "deeplab_tf.crf imports the models:\n" + "\n".join(bad)


def test_library_code_does_not_import_the_command_line():
    bad = command_line_imports(import_graph())
    assert not bad, "library modules import command-line modules:\n" + "\n".join(bad)


# --- the checker itself, on planted trees ----------------------------------------------------


def _tree(tmp_path, files: dict[str, str]) -> str:
    root = tmp_path / "pkg"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(root)


def test_checker_finds_a_planted_cycle_through_a_function_level_import(tmp_path):
    root = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from pkg import b\n",
            "b.py": "import os\nfrom .sub import c\n",
            "sub/__init__.py": "",
            "sub/c.py": "def f():\n    from ..a import thing\n    return thing\n",
            "d.py": "import pkg.a\n",
        },
    )
    graph = import_graph(root, "pkg")
    assert graph["pkg.a"] == {"pkg.b": 1}
    assert graph["pkg.b"] == {"pkg.sub.c": 2}  # `from .sub import c`: c is a submodule
    assert graph["pkg.sub.c"] == {"pkg.a": 2}  # relative, inside a function
    assert graph["pkg.d"] == {"pkg.a": 1}
    cycles = find_cycles(graph)
    assert cycles == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]
    assert _describe(cycles[0], graph) == (
        "pkg.a (line 1) -> pkg.b (line 2) -> pkg.sub.c (line 2) -> pkg.a"
    )


def test_checker_passes_an_acyclic_tree_and_names_from_imports_of_objects(tmp_path):
    root = _tree(
        tmp_path,
        {
            "__init__.py": "from pkg.a import helper\n",
            "a.py": "from pkg.sub import c\nfrom pkg.sub.c import VALUE\n",
            "sub/__init__.py": "X = 1\n",
            "sub/c.py": "from pkg.sub import X\nVALUE = X\n",
        },
    )
    graph = import_graph(root, "pkg")
    assert graph["pkg"] == {"pkg.a": 1}  # helper is a name, not a module
    assert graph["pkg.a"] == {"pkg.sub.c": 1}
    assert graph["pkg.sub.c"] == {"pkg.sub": 1}
    assert find_cycles(graph) == []


@pytest.mark.parametrize("upper", MODELS_MAY_NOT_IMPORT)
def test_checker_flags_models_importing_upper_layers(tmp_path, upper):
    root = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "models/__init__.py": "",
            "models/net.py": f"def build():\n    from pkg.{upper}.impl import x\n",
            f"{upper}/__init__.py": "",
            f"{upper}/impl.py": "x = 1\n",
        },
    )
    bad = layering_violations(import_graph(root, "pkg"), "pkg")
    assert bad == [f"pkg.models.net (line 2) imports pkg.{upper}.impl"]


def test_checker_flags_library_code_importing_a_command_module(tmp_path):
    root = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "cli.py": "from pkg.errors import E\n",
            "errors.py": "class E(Exception): ...\n",
            "train/__init__.py": "",
            "train/cli.py": "from pkg.cli import main\nfrom pkg.train import core\n",
            "train/core.py": "def run():\n    from pkg.train.cli import load\n",
            "quick.py": "from pkg.train.core import run\n",
        },
    )
    graph = import_graph(root, "pkg")
    assert command_line_imports(graph, "pkg") == ["pkg.train.core (line 2) imports pkg.train.cli"]
    assert edges_between(graph, ["pkg.train"], ["pkg.errors", "pkg.cli"]) == [
        "pkg.train.cli (line 1) imports pkg.cli"
    ]
