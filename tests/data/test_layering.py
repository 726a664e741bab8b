"""bayesdyn.data stays below every other layer: no pyro, no autograd, no shared data folder."""

import ast
from pathlib import Path

import bayesdyn.data

DATA_DIR = Path(bayesdyn.data.__file__).parent
SOURCES = sorted(DATA_DIR.glob("*.py"))


def test_sources_found():
    assert len(SOURCES) >= 5


def test_no_forbidden_imports():
    allowed_internal = {"bayesdyn._validation", "bayesdyn._typing"}
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level == 2:  # from .. import x / from ..mod import x
                    names = [f"bayesdyn.{node.module}" if node.module else "bayesdyn"]
                    assert names[0] in allowed_internal, (path.name, names)
                    continue
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert not name.startswith("pyro"), (path.name, name)
                assert not name.startswith("torch.autograd"), (path.name, name)


def test_no_autograd_or_shared_paths_in_source():
    for path in SOURCES:
        text = path.read_text()
        for needle in (
            ".backward(",
            "torch.autograd",
            "requires_grad_(",
            "/work/shared",
            "shared/data",
        ):
            assert needle not in text, (path.name, needle)
