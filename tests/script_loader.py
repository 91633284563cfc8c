"""Import a script of scripts/ (not a package) as a module, for tests of its helpers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(file_name: str, module_name: str | None = None) -> ModuleType:
    """scripts/`file_name` loaded as `module_name` (default: the file's stem)."""
    name = module_name or Path(file_name).stem
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / file_name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module
