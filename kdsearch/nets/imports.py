"""Import the user's own code named by ``package.module:attribute`` (models, data factories), with clear errors.

The folders searched are the usual ``sys.path`` (standard library, site-packages), then ``runtime.python_path``
(the study file's folder first, see ``config.load.with_study_folder``), then the working directory.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from ..errors import KdsearchError, first_line

_ADDED: list[str] = []  # folders this process put on sys.path, in the order searched


def use_python_path(folders: Sequence[Path | str] = ()) -> None:
    """Put ``folders`` and the working directory at the *end* of ``sys.path`` (once each), after the standard
    library and site-packages: a user's ``onnx.py`` or ``plotly.py`` cannot shadow the package of that name."""
    wanted = list(dict.fromkeys([str(Path(f).expanduser().resolve()) for f in folders] + [os.getcwd()]))
    for folder in _ADDED:
        if folder in sys.path and folder not in wanted:
            sys.path.remove(folder)
    for folder in wanted:
        if folder not in sys.path:
            sys.path.append(folder)
    _ADDED[:] = wanted  # the folders of the study at hand, for error messages
    importlib.invalidate_caches()


def searched_folders() -> list[str]:
    """The folders the study at hand put on ``sys.path`` (for error messages)."""
    return list(_ADDED) or [os.getcwd()]


def import_object(path: str, *, field: str) -> Any:
    """The object named by ``path`` (``package.module:attr``, ``attr`` may be dotted); a KdsearchError
    naming ``field`` when the module is missing, fails to import, or lacks the attribute."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise KdsearchError(f"{field} = {path!r} is not an import path; write it as 'package.module:callable'")
    if not _ADDED:
        use_python_path()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is not None and module_name != err.name and not module_name.startswith(err.name + "."):
            raise KdsearchError(
                f"{field} = {path!r}: importing {module_name} failed: it needs the module {err.name!r}, which is not "
                "installed; install it (pip install ...) into kdsearch's environment"
            ) from None
        raise KdsearchError(
            f"{field} = {path!r}: no module named {module_name!r} in {', '.join(searched_folders())} or the installed "
            "packages; put the file there or add its folder to runtime.python_path"
        ) from None
    except Exception as err:  # noqa: BLE001 - the user's module may raise anything while it is imported
        raise KdsearchError(
            f"{field} = {path!r}: importing {module_name} raised {type(err).__name__}: {first_line(err)}"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            where = getattr(module, "__file__", None) or module_name
            public = sorted(n for n in vars(module) if not n.startswith("_"))[:12]
            raise KdsearchError(
                f"{field} = {path!r}: {where} has no attribute {attr!r}; it defines: {', '.join(public) or 'nothing'}"
            )
        obj = getattr(obj, part)
    return obj
