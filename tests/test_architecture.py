"""The layering the design promises, kept by a test: nothing outside ``widgets/`` and the
napari hooks imports napari or Qt (ARCHITECTURE: "Library first, GUI thin"). Imports are
read with ``ast`` from the source, function-level ones included, so a lazy import inside a
library function counts as much as one at the top of a module."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "src" / "napari_medattn"
#: Top-level names of the GUI toolkits and napari itself.
GUI_MODULES = {"napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt", "magicgui"}
#: Where they may be imported: the widgets, the npe2 hooks, and the launcher that starts
#: napari for `make run`.
ALLOWED = ("widgets/", "_napari_hooks.py", "launch.py")


def gui_imports(source: str, filename: str = "<source>") -> list[tuple[int, str]]:
    """``(line, module)`` of every import of a GUI module in ``source``, at any depth."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, name) for name in names
                  if name.split(".")[0] in GUI_MODULES]
    return found


def library_modules() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py")
                  if not path.relative_to(PACKAGE).as_posix().startswith(ALLOWED))


def test_the_check_finds_top_level_and_function_level_imports():
    source = ("import os\nimport napari.layers\n\ndef f():\n    from qtpy.QtWidgets import "
              "QWidget\n    import superqt as s\n    from . import napari\n"
              "    from napari_medattn import io\n")
    assert gui_imports(source) == [(2, "napari.layers"), (5, "qtpy.QtWidgets"), (6, "superqt")]


@pytest.mark.parametrize("path", library_modules(),
                         ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_library_modules_import_no_gui(path):
    found = gui_imports(path.read_text(encoding="utf-8"), str(path))
    assert not found, (f"{path.relative_to(PACKAGE)} imports "
                       f"{', '.join(f'{m} (line {n})' for n, m in found)}; only widgets/ and "
                       f"the napari hooks may import napari or Qt.")
