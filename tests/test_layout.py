"""The package's shape: import direction between folders, no import cycle between
modules, a light command line, and a distribution that claims no top-level name
but ``segeig``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "segeig"

#: Layers, lowest first: a module imports its own folder and lower layers only.
#: The workflows (train, evaluation, batch) do not import each other; the two
#: front ends may (``segeig demo`` serves the app, ``python app/app.py`` is
#: ``segeig demo``).
LAYERS = {"core": 0, "data": 1, "train": 2, "evaluation": 2, "batch": 2, "cli": 3, "app": 3}


def _group(module: str) -> str:
    parts = module.split(".")
    if parts[:2] == ["segeig", "app"]:
        return "app"
    if module == "segeig.__main__":  # `python -m segeig` is the command line
        return "cli"
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return "core"


def _sources() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        out.append((".".join(rel.parts), path))
    for path in sorted((ROOT / "app").glob("*.py")):
        out.append((f"segeig.app.{path.stem}", path))
    return out


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every segeig module a file imports, lazy imports inside functions included.

    ``from package import name`` counts as importing the submodule when
    ``name`` is one, else the package itself.
    """
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "segeig" or node.module.startswith("segeig."):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.append((node.lineno, sub if _module_node(sub) else node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("segeig")]
    return found


def test_imports_point_down_the_layers():
    wrong = []
    for module, path in _sources():
        group = _group(module)
        for line, name in _imports(path):
            target = _group(name)
            if target == group or LAYERS[target] < LAYERS[group]:
                continue
            if LAYERS[target] > LAYERS[group] or LAYERS[group] == 2:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({group}) imports {name} "
                             f"({target})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def _module_file(module: str) -> Path | None:
    """The source file of a segeig module, or None for a package (or outside segeig)."""
    parts = module.split(".")
    in_app = parts[:2] == ["segeig", "app"]
    base = ROOT / "app" / Path(*parts[2:]) if in_app else ROOT / Path(*parts)
    path = base.with_suffix(".py")
    return path if path.is_file() else None


def _top_level_names(path: Path) -> set[str]:
    names: set[str] = set()
    todo = list(ast.parse(path.read_text()).body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.If, ast.Try)):
            todo += node.body + node.orelse + getattr(node, "finalbody", [])
    return names


def test_every_name_is_imported_from_its_home():
    """No module passes on names it imports: only a folder's __init__ re-exports."""
    users = [path for folder in ("segeig", "app", "scripts", "tests")
             for path in sorted((ROOT / folder).rglob("*.py"))]
    homes: dict[Path, set[str]] = {}
    wrong = []
    for path in users:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                    and node.module.startswith("segeig.")):
                continue
            source = _module_file(node.module)
            if source is None:
                continue
            defined = homes.setdefault(source, _top_level_names(source))
            for alias in node.names:
                submodule = source.with_suffix("") / f"{alias.name}.py"
                if alias.name not in defined and not submodule.is_file():
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} imports "
                                 f"{alias.name} from {node.module}, which does not define it")
    assert not wrong, "\n".join(wrong)


def _module_node(module: str) -> str | None:
    """The module a dotted name loads: itself, or its package's ``__init__``."""
    if _module_file(module) is not None:
        return module
    parts = module.split(".")
    in_app = parts[:2] == ["segeig", "app"]
    folder = ROOT / "app" / Path(*parts[2:]) if in_app else ROOT / Path(*parts)
    return module if (folder / "__init__.py").is_file() else None


def _import_graph() -> dict[str, set[str]]:
    """module → the segeig modules it imports (anywhere in the file, see :func:`_imports`).

    The root package's lazy ``__getattr__`` (``segeig.load``) is left out:
    every module's parent package is imported before the module, so a name
    taken from the root can never close a cycle at import time, and the root
    imports nothing eagerly.
    """
    modules = {name for name, _ in _sources()}
    modules |= {name.removesuffix(".__init__") for name in modules}
    graph: dict[str, set[str]] = {}
    for module, path in _sources():
        node = module.removesuffix(".__init__")
        edges = graph.setdefault(node, set())
        if node == "segeig":
            continue
        for _, target in _imports(path):
            target_node = _module_node(target)
            if target_node and target_node != node and target_node in modules:
                edges.add(target_node)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_modules():
    """No module reaches itself through imports, lazy ones inside functions included."""
    cycles = _cycles(_import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_cycle_check_sees_lazy_imports(tmp_path):
    """The check is not blind: a cycle closed inside a function is found."""
    graph = {"segeig.a": {"segeig.b"}, "segeig.b": {"segeig.a"}, "segeig.c": {"segeig.a"}}
    assert _cycles(graph) == [["segeig.a", "segeig.b"]]
    source = tmp_path / "lazy.py"
    source.write_text("def f():\n    from segeig.crf import refine\n")
    assert _imports(source) == [(2, "segeig.crf.refine")]


def test_data_reads_datasets_only():
    """Nothing under ``segeig/data`` runs the backbone or the model."""
    heavy = ("segeig.backbone", "segeig.model", "segeig.head", "segeig.predictor")
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {name}"
             for path in sorted((PACKAGE / "data").glob("*.py"))
             for line, name in _imports(path) if name.startswith(heavy)]
    assert not wrong, "\n".join(wrong)


def test_core_stays_small():
    core = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(core) <= 18, core


COMMANDS = ("segment", "fit", "train", "evaluate", "label", "demo", "info")


def test_help_imports_no_heavy_library():
    code = (
        "import contextlib, io, sys\n"
        "from segeig.cli import main\n"
        f"for argv in ([], *[[c] for c in {COMMANDS!r}]):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            main([*argv, '--help'])\n"
        "        except SystemExit:\n"
        "            pass\n"
        "heavy = ('torch', 'timm', 'gradio', 'cv2', 'numpy', 'matplotlib')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout


def test_distribution_installs_only_the_segeig_namespace():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = set(config["packages"])
    assert all(p == "segeig" or p.startswith("segeig.") for p in packages), packages
    assert config["package-dir"] == {"segeig.app": "app"}
    # every folder with an __init__ is listed, so none is left out of a wheel
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")}
    assert folders | {"segeig.app"} == packages


@pytest.mark.parametrize("argv", [["--help"], ["--port", "0"]])
def test_app_script_runs_segeig_demo(argv):
    """``python app/app.py`` (the Spaces convention) is ``segeig demo`` with the same flags."""
    out = subprocess.run([sys.executable, str(ROOT / "app" / "app.py"), *argv],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    if argv == ["--help"]:
        assert out.returncode == 0 and "usage: segeig demo" in out.stdout
        assert "--crf-backend {auto,torch,densecrf}" in out.stdout
    else:  # refused before anything heavy is loaded, with the demo's own message
        assert out.returncode == 2 and "--port must be in 1..65535" in out.stderr


def test_architecture_page_names_every_module():
    """docs/architecture.md maps each module to its job: none missing, none stale."""
    import re

    page = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`((?:segeig|app)/[\w/]+\.py)`", page))
    present = {str(p.relative_to(ROOT)) for folder in ("segeig", "app")
               for p in (ROOT / folder).rglob("*.py")}
    assert not present - named, f"modules missing from docs/architecture.md: {present - named}"
    assert not named - present, f"docs/architecture.md names no such module: {named - present}"
