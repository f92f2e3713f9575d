"""The front-end's layers import downward only, and the front-end stays free of the engine side.

Top to bottom: server -> api -> websocket -> openai -> policy -> storage | engine | observability -> errors, settings.
A module may import its own package and any lower layer; packages on the same floor do not import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

FRONTEND = Path(__file__).resolve().parents[2] / "frontend_api"
FLOORS = {
    "server": 0,
    "api": 1,
    "websocket": 2,
    "openai": 3,
    "policy": 4,
    "storage": 5,
    "engine": 5,
    "observability": 5,
    "errors": 6,
    "settings": 6,
}
FORBIDDEN = ("torch", "transformers", "model_repository", "build_engines", "llmserve", "triton_python_backend_utils")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _part(path: Path) -> str:
    relative = path.relative_to(FRONTEND).with_suffix("")
    return relative.parts[0]


MODULES = sorted(p for p in FRONTEND.rglob("*.py") if "node_modules" not in p.parts and p.name != "__init__.py")


def test_every_module_is_on_a_floor():
    assert MODULES, "no modules found"
    assert {_part(p) for p in MODULES} <= set(FLOORS), "a new top-level package of frontend_api needs a floor here"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(FRONTEND)))
def test_imports_go_downward(path: Path):
    here = _part(path)
    for name in _imports(path):
        assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}: the front-end stays slim"
        if not name.startswith("frontend_api."):
            continue
        there = name.split(".")[1]
        if there == here:
            continue
        assert FLOORS[there] > FLOORS[here], f"{here}/{path.name} imports {name}: {there} is not below {here}"
