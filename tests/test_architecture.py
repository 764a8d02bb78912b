"""The layout rules of docs/architecture.md, checked on the source: no import loops, nothing low-level imports something
high-level, `hallo_core` never imports ComfyUI, and docstrings point only at files in the repository."""

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "hallo_core"

# Packages and top-level modules of hallo_core by level; a module may import its own level or lower ones only.
LEVELS = {
    "errors": 0,
    "runtime": 1, "loading": 1, "media": 1,
    "memory": 2, "audio": 2, "face": 2,
    "render": 3,
    "hallo3": 4, "hallo_unet": 4, "upscaler": 4,
    "backbones": 5, "generate": 5, "convert": 5, "batch": 5, "parallel": 5,
    "cli": 6, "__main__": 6, "dev": 6, "__init__": 6,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every hallo_core module `path` imports, at module level or inside functions."""
    tree = ast.parse(path.read_text())
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("hallo_core"):
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("hallo_core"))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in CORE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        graph[name] = {target for target in _imports(path) if target in modules and target != name}
    return graph


def _level(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    return LEVELS[top]


def test_every_package_has_a_level():
    tops = {p.name if p.is_dir() else p.stem for p in CORE.iterdir()
            if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"}
    assert tops <= set(LEVELS), tops - set(LEVELS)


def test_nothing_imports_upward():
    upward = [f"{module} -> {target}" for module, targets in _graph().items() for target in targets
              if _level(target) > _level(module)]
    assert upward == []


def test_no_import_loops():
    graph = _graph()
    # Package __init__ modules re-export their own submodules; an edge into one's own package is not a loop.
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    state, loops = {}, []

    def visit(node, stack):
        state[node] = "open"
        for target in edges[node]:
            if state.get(target) == "open":
                loops.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[node] = "done"

    for module in edges:
        if module not in state:
            visit(module, [module])
    assert loops == []


def test_the_engine_never_imports_comfyui():
    pattern = re.compile(r"^\s*(from|import)\s+(comfy|comfy_api|folder_paths|server|nodes)\b", re.M)
    offenders = [str(p.relative_to(REPO)) for p in CORE.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_docs_point_only_at_files_in_the_repository():
    outside = re.compile(r"\b\w+_spec\.md\b|shared/design|ARCHITECTURE\.md|performance\.md")
    files = [*CORE.rglob("*.py"), *(REPO / "nodes").rglob("*.py"), *(REPO / "docs").glob("*.md"), REPO / "README.md",
             *(REPO / "web").glob("*.js")]
    offenders = [f"{p.relative_to(REPO)}:{n}" for p in files for n, line in enumerate(p.read_text().splitlines(), 1)
                 if outside.search(line)]
    assert offenders == []
    mentioned = set(re.findall(r"\b(?:hallo_core|docs|nodes|web|workflows|bench|tests)/[\w/.-]+\.(?:py|md|json|js)\b",
                               "\n".join(p.read_text() for p in files)))
    missing = sorted(name for name in mentioned if not (REPO / name).exists())
    assert missing == []
