"""The package's layout: the engine (the student's path) imports nothing outside
minivit/engine and holds no speed code; no module of minivit imports itself in a loop;
`import minivit` loads nothing until a name is used."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import minivit

PACKAGE = Path(minivit.__file__).resolve().parent
ENGINE = PACKAGE / "engine"


def _tree(path):
    return ast.parse(path.read_text())


def _module_name(path):
    """minivit/engine/layers.py -> "minivit.engine.layers" (a package: its __init__)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path):
    """The minivit modules a file imports, lazy imports inside functions included, resolved
    to full names ("minivit.engine.layers")."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "minivit"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = ".".join(base[:len(base) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module.split(".")[0] != "minivit":
                continue
            for a in node.names:             # `from . import x` may name a module
                sub = f"{module}.{a.name}"
                found.add(sub if _path_of(sub) else module)
    return found


def _path_of(module):
    """The file of a minivit module, or None."""
    if module == "minivit":
        return PACKAGE / "__init__.py"
    rel = Path(*module.split(".")[1:])
    for candidate in (PACKAGE / rel.with_suffix(".py"), PACKAGE / rel / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "pretrained" not in p.parts and "sample" not in p.parts)


def test_the_engine_imports_nothing_outside_the_engine():
    for path in sorted(ENGINE.glob("*.py")):
        outside = {m for m in _imports(path) if not m.startswith("minivit.engine")}
        assert not outside, f"{path.relative_to(PACKAGE.parent)} imports {sorted(outside)}"


def test_the_course_builds_on_the_engine_alone():
    """minivit/course/ (the exercises and their grading) imports the engine and itself,
    never the fast path or the machinery; the engine never imports the course."""
    for path in sorted((PACKAGE / "course").glob("*.py")):
        outside = {m for m in _imports(path)
                   if not (m.startswith("minivit.engine") or m.startswith("minivit.course"))}
        assert not outside, f"{path.relative_to(PACKAGE.parent)} imports {sorted(outside)}"


def test_the_engine_holds_no_speed_code():
    """No name in the engine's code speaks of threads, shards, malloc, fast paths or the
    class-token-only block: that is the fast path's (minivit/fast/)."""
    for path in sorted(ENGINE.glob("*.py")):
        tree = _tree(path)
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        names |= {a.arg for n in ast.walk(tree) if isinstance(n, ast.arguments) for a in n.args + n.kwonlyargs}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        for word in ("thread", "shard", "malloc", "fast", "parallel", "cls_only", "num_queries"):
            assert not [n for n in names if word in n.lower()], (path.name, word)


def test_no_import_loops_between_minivit_modules():
    """Every import of one minivit module by another (packages' __init__ included), lazy
    ones included, forms no cycle."""
    graph = {_module_name(p): {m for m in _imports(p) if _path_of(m)}
             for p in _modules() if p.name != "__main__.py"}
    assert "minivit.engine.layers" in graph and "minivit.engine.backend" in graph["minivit.engine.layers"]

    def visit(mod, path):
        assert mod not in path, "import loop: " + " -> ".join(path + [mod])
        for dep in graph.get(mod, ()):
            visit(dep, path + [mod])
    for mod in graph:
        visit(mod, [])


def test_importing_minivit_loads_nothing_until_a_name_is_used():
    code = ("import sys, minivit\n"
            "print(sorted(m for m in sys.modules if m.startswith('minivit.')))\n"
            "minivit.ViT\n"
            "print('minivit.engine.model' in sys.modules, 'minivit.fast' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["[]", "True False"]


@pytest.mark.parametrize("name", ["layers", "gradcheck", "backend", "kernels", "FastViT"])
def test_the_old_top_level_names_are_gone(name):
    """Since the engine/fast split, minivit.layers and the like are minivit.engine.layers
    (etc.): the old names raise AttributeError instead of half working."""
    with pytest.raises(AttributeError, match=f"module 'minivit' has no attribute '{name}'"):
        getattr(minivit, name)
