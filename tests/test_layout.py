"""The library's layering: `carkinetics/` never imports the SLE application (`carkinetics.models`), its import graph
has no cycle, and its public namespace holds no SLE-specific name."""

import ast
import pathlib
import subprocess
import sys

import carkinetics as ck

ROOT = pathlib.Path(ck.__file__).resolve().parent


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: pathlib.Path) -> set[str]:
    """Absolute names of the modules `path` imports (relative imports resolved), at any depth of the file."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            for a in node.names:  # `from . import x` may name a submodule
                out.add(f"{target}.{a.name}")
    return out


def _library_modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def test_library_never_imports_the_models_package():
    offenders = {}
    for name, path in _library_modules().items():
        bad = sorted(i for i in _imports(path) if i == "carkinetics.models" or i.startswith("carkinetics.models."))
        if bad:
            offenders[name] = bad
    assert offenders == {}


def test_import_graph_of_the_library_has_no_cycle():
    modules = _library_modules()
    graph = {}
    for name, path in modules.items():
        deps = set()
        for imp in _imports(path):
            # an import of a.b.c also runs a and a.b: count the deepest library module named
            while imp and imp not in modules:
                imp = imp.rsplit(".", 1)[0] if "." in imp else ""
            if imp and imp != name and not name.startswith(imp + "."):
                deps.add(imp)
        graph[name] = deps
    # Packages import their submodules by design (`__init__` re-exports); a cycle through a package's own
    # `__init__` and one of its submodules is not a cycle of the code, so drop edges from a module to its parents.
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d) :] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert cycles == []


def test_importing_carkinetics_does_not_import_the_models_package():
    code = "import sys, carkinetics; print(any(m.startswith('carkinetics.models') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_public_namespace_has_no_sle_specific_name():
    sle_words = ("sle", "lupus", "arm", "protocol", "erlangen", "sledai", "translation_report", "quantities")
    names = [n for n in dir(ck) if not n.startswith("_")]
    offenders = [n for n in names if any(w in n.lower() for w in sle_words) and n not in ("ParameterSpace",)]
    assert offenders == []
