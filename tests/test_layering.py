"""Layers only look down: every import of every module of ours, read with ast (nothing is imported here).

The rule (documented in ``lab/__init__.py`` and the README):

* ``erf`` (the instrument) imports nothing of ours;
* ``parsenet`` imports only ``erf``;
* ``figures`` imports only ``erf`` (plain helpers and types), and opens no file and runs no model:
  it imports neither torch nor a file-system module, and calls no ``open``, ``savefig``, ``read_*``,
  ``write_*``, ``load``/``save``, ``atomic_write`` or a model's ``eval``/``forward``;
* ``lab`` (the application layer) imports ``erf``, ``parsenet`` and ``figures``;
* ``cli`` may import all of them.

Function-level imports count as much as module-level ones: a hidden import is still an upward one.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("erf", "parsenet", "figures", "lab", "cli")
ALLOWED = {
    "erf": set(),
    "parsenet": {"erf"},
    "figures": {"erf"},
    "lab": {"erf", "parsenet", "figures"},
    "cli": {"erf", "parsenet", "figures", "lab"},
}

FIGURES_FORBIDDEN_MODULES = {"torch", "torchvision", "pathlib", "os", "shutil", "tempfile", "io", "pickle",
                             "json", "subprocess", "PIL"}
FIGURES_FORBIDDEN_CALLS = {"open", "savefig", "read_text", "read_bytes", "write_text", "write_bytes", "load",
                           "save", "savez", "savez_compressed", "atomic_write", "mkdir", "unlink", "eval", "forward",
                           "imsave", "imread"}


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, top-level module) of every import in ``path``; relative imports resolve to ``package``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.lineno, package if node.level else (node.module or "").split(".")[0]))
    return out


def _upward(path: Path, package: str) -> list[tuple[int, str]]:
    return [(line, top) for line, top in _imports(path, package)
            if top in OURS and top != package and top not in ALLOWED[package]]


def _drawing_violations(path: Path) -> list[str]:
    """What makes a figures module more than a drawing: file-system or torch imports, file or model calls."""
    bad = [f"line {line}: imports {top}" for line, top in _imports(path, "figures") if top in FIGURES_FORBIDDEN_MODULES]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            if name in FIGURES_FORBIDDEN_CALLS:
                bad.append(f"line {node.lineno}: calls {name}()")
    return bad


def _upward_imports() -> list[tuple[str, int, str]]:
    return [(path.relative_to(ROOT).as_posix(), line, top)
            for package in OURS for path in _modules(package) for line, top in _upward(path, package)]


def test_every_package_exists_and_is_walked():
    for package in OURS:
        assert (ROOT / package / "__init__.py").is_file()
        assert _modules(package), package


def test_no_upward_imports():
    found = _upward_imports()
    bad = [f"{path}:{line} imports {top}" for path, line, top in found]
    assert not bad, "upward imports:\n" + "\n".join(bad)


@pytest.mark.parametrize("path", _modules("figures"), ids=lambda p: p.name)
def test_figures_open_no_file_and_run_no_model(path):
    bad = _drawing_violations(path)
    assert not bad, f"{path.name} must only draw arrays:\n" + "\n".join(bad)


def test_the_checker_sees_what_it_forbids(tmp_path):
    # A hidden function-level upward import, a relative import, a file write and a model run.
    bad = tmp_path / "bad.py"
    bad.write_text("from . import _style\n"
                   "def f(fig, model, x):\n"
                   "    from lab import render\n"
                   "    import torch\n"
                   "    fig.savefig('x.png')\n"
                   "    return model.eval()(x)\n")
    assert _upward(bad, "figures") == [(3, "lab")]
    assert _upward(bad, "lab") == []
    assert _upward(bad, "erf") == [(3, "lab")]  # the relative import stays inside the package
    assert _drawing_violations(bad) == ["line 4: imports torch", "line 5: calls savefig()", "line 6: calls eval()"]
