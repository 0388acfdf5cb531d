"""The layer contract: server -> pipelines -> weights, no cycles between subpackages, project imports at module
level only. Read from the source (AST), so a planted upward import fails here before anything runs."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"server": "vace.server", "pipelines": "vace.pipelines", "weights": "vace.weights"}
RANK = {"vace.weights": 0, "vace.pipelines": 1, "vace.server": 2}


def modules() -> Iterator[tuple[str, Path]]:
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            yield ".".join((package, *parts)), path


def imports(module: str, path: Path) -> Iterator[tuple[str, bool, int]]:
    """(imported module, at module level?, line) for every import of a vace module."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                base = ".".join(module.split(".")[: -node.level] + [node.module])
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            if name.startswith("vace."):
                yield name, id(node) in top, node.lineno


def unit(name: str) -> str:
    """The node of the cycle check: vace.<layer>.<subpackage or module>."""
    return ".".join(name.split(".")[:3])


def existing_unit(name: str, known: set[str]) -> str | None:
    module = existing_module(name, known)
    return unit(module) if module else None


def heavy_roots(path: Path) -> set[str]:
    """The heavy dependencies (LOCAL_OK) a module imports at module level."""
    tree = ast.parse(path.read_text(), str(path))
    roots = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
    return roots & LOCAL_OK


def torch_bound(mods: dict[str, Path]) -> set[str]:
    """Our modules that load a heavy dependency on import, directly or through our modules they import at module
    level: these may be imported inside a function (with a comment), so that a light process never loads them."""
    bound = {m for m, path in mods.items() if heavy_roots(path)}
    known = set(mods)
    top = {m: {existing_module(n, known) for n, at_top, _ in imports(m, path) if at_top} for m, path in mods.items()}
    while True:
        more = {m for m, targets in top.items() if m not in bound and targets & bound}
        if not more:
            return bound
        bound |= more


def existing_module(name: str, known: set[str]) -> str | None:
    parts = name.split(".")
    return next((".".join(parts[:i]) for i in range(len(parts), 2, -1) if ".".join(parts[:i]) in known), None)


def commented(lines: list[str], line: int) -> bool:
    """An import at 1-based `line` says why: a comment on it or on the line above."""
    return "#" in lines[line - 1] or lines[line - 2].strip().startswith("#")


def graph() -> tuple[dict[str, set[str]], list[str]]:
    mods = dict(modules())
    known = set(mods)
    bound = torch_bound(mods)
    edges: dict[str, set[str]] = {}
    problems = []
    for module, path in mods.items():
        layer = ".".join(module.split(".")[:2])
        lines = path.read_text().split("\n")
        for name, at_top, line in imports(module, path):
            target = existing_unit(name, known)
            if target is None:
                continue
            where = f"{path.relative_to(ROOT)}:{line}"
            if RANK[".".join(target.split(".")[:2])] > RANK[layer]:
                problems.append(f"{where}: {module} imports {name} (a layer above it)")
            lazy_ok = existing_module(name, known) in bound and commented(lines, line)
            if not at_top and not lazy_ok:
                problems.append(f"{where}: {module} imports {name} inside a function (project imports go at "
                                "module level, except modules that load torch & co., with a comment saying why; "
                                "a cycle an import dodges must be fixed instead)")
            if target != unit(module):
                edges.setdefault(unit(module), set()).add(target)
    return edges, problems


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_layers_point_one_way_and_project_imports_are_module_level():
    _, problems = graph()
    assert problems == [], "\n".join(problems)


def test_no_cycle_between_subpackages():
    edges, _ = graph()
    cycle = find_cycle(edges)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_contract_catches_a_planted_upward_import(tmp_path, monkeypatch):
    """The checker itself: an upward import and a cycle in a planted tree are reported."""
    for folder in FOLDERS:
        (tmp_path / folder / "a").mkdir(parents=True)
        (tmp_path / folder / "__init__.py").write_text("")
        (tmp_path / folder / "a" / "__init__.py").write_text("")
    (tmp_path / "weights" / "a" / "x.py").write_text("from vace.server.a import y\n")
    (tmp_path / "server" / "a" / "y.py").write_text("")
    (tmp_path / "pipelines" / "b.py").write_text("from vace.pipelines.c import z\n")
    (tmp_path / "pipelines" / "c.py").write_text("from vace.pipelines.b import w\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    edges, problems = graph()
    assert any("vace.weights.a.x imports vace.server.a.y (a layer above it)" in p for p in problems)
    assert find_cycle(edges) in (["vace.pipelines.b", "vace.pipelines.c", "vace.pipelines.b"],
                                 ["vace.pipelines.c", "vace.pipelines.b", "vace.pipelines.c"])


# Dependencies heavy enough (or optional enough) to be imported where they are used, never at module level of
# modules the API process loads; every such import says why in a comment.
LOCAL_OK = {"torch", "transformers", "diffusers", "torchvision", "onnxruntime", "onnx", "torchao", "cv2",
            "tokenizers", "ray", "psycopg", "uvicorn", "safetensors", "accelerate", "playwright", "peft", "s3fs",
            "fsspec"}


def test_function_local_imports_are_heavy_dependencies_with_a_reason():
    problems = []
    for _, path in modules():
        source = path.read_text()
        lines = source.split("\n")
        tree = ast.parse(source, str(path))
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in top or getattr(node, "level", 0):
                continue
            name = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            root = (name or "").split(".")[0]
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if root == "vace":
                continue  # reported by the layer test
            if root not in LOCAL_OK:
                problems.append(f"{where}: `{root}` imported inside a function (import it at module level)")
            elif "#" not in lines[node.end_lineno - 1] and not lines[node.lineno - 2].strip().startswith("#"):
                problems.append(f"{where}: a function-local import of `{root}` without a comment saying why")
    assert problems == [], "\n".join(problems)


def test_the_api_process_does_not_load_the_engine(tiny_model_dir: Path, tmp_path: Path):
    """`vace serve --model tiny` parses and resolves its settings (the tiny bundle exists), builds the app, lists
    its LoRA library and takes a job with a LoRA and one with preset turbo (both checked against the model from
    the files' headers) without torch, diffusers or transformers: only workers load them (a fresh interpreter,
    since this test process has them already). Writing a missing tiny fixture needs torch; a bundle already
    written does not."""
    code = """
import sys
import vace.server.cli as cli
from fastapi.testclient import TestClient
from vace.server import serve
from vace.server.app import create_app
from vace.server.settings import from_flags
flags = ['serve', '--model', 'tiny', '--no-worker', '--data-dir', sys.argv[1]]
settings = serve.resolve(from_flags(cli.build_parser(['serve']).parse_args(flags)))
http = TestClient(create_app(settings))
assert 'tiny-style' in str(http.get('/v1/loras').json())
job = {'prompt': 'x', 'width': 32, 'height': 32, 'num_frames': 5, 'steps': 2}
for extra in ({'loras': [{'name': 'tiny-style', 'scale': 0.5}]}, {'preset': 'turbo'}):
    r = http.post('/v1/models/vace/tiny/predictions', json={'input': {**job, **extra}})
    assert r.status_code == 201, r.text
print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'safetensors') if m in sys.modules))
"""
    for _ in range(2):  # the first start writes what the tiny demo server adds (LoRAs, checker); the second finds it
        result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "data")],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
