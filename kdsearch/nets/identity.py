"""What a study's models and data factory *are*, beyond their names: the sha256 of each user file an import path
runs, of ``student.checkpoint``, and of a handed student factory's weights — found without importing anything.

A study records this (``search.study.CODE_ATTR``) so that a resume or a joining worker whose code differs is
refused, and so that a spec read back from a study imports only files that match what the study recorded.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.machinery
import importlib.util
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import KdsearchError

IMPORT_PATH_FIELDS = ("teacher.arch", "student.arch", "data.factory")  # the spec fields that name user code
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what a hub-style folder holds, in preference order


@dataclass(frozen=True)
class ModuleFile:
    """One file that importing a module runs: its dotted ``module`` name, its ``path`` and where it comes from
    (``"user"``: the study's folders or the working directory; ``"installed"``: site-packages; ``"stdlib"``)."""

    module: str
    path: Path | None
    kind: str


def file_sha256(path: Path) -> str:
    """sha256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_file(path: Path) -> Path | None:
    """The weights file of a hub-style folder (``model.safetensors``, else ``pytorch_model.bin``), or None."""
    return next((path / name for name in WEIGHT_FILES if (path / name).is_file()), None)


def hub_fingerprint(arch: str) -> str:
    """sha256 (16 hex) of the files behind an ``hf/`` or ``hf-config/`` arch (config and weights), "" otherwise:
    a changed folder changes the teacher key and is caught on resume."""
    from ..config.model_spec import HF_PATH_PREFIXES

    kind = next((p for p in HF_PATH_PREFIXES if arch.startswith(p)), None)
    if kind is None:
        return ""
    path = Path(arch[len(kind) :]).expanduser()
    files = [path] if path.is_file() else sorted(path.glob("*")) if path.is_dir() else []
    h = hashlib.sha256()
    for f in files:
        if f.is_file() and f.suffix in (".json", ".safetensors", ".bin"):
            h.update(f"{f.name}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()[:16]


@functools.cache
def _stdlib_folders() -> list[Path]:
    paths = sysconfig.get_paths()
    return [Path(paths[k]).resolve() for k in ("stdlib", "platstdlib") if paths.get(k)]


@functools.cache
def _site_folders() -> list[Path]:
    import site

    found = {sysconfig.get_paths().get(k) for k in ("purelib", "platlib")}
    found.update(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
    found.add(site.getusersitepackages())
    return [Path(p).resolve() for p in found if p]


def _kind(path: Path | None) -> str:
    if path is None:
        return "stdlib"  # built-in or frozen: part of the interpreter
    resolved = path.resolve()
    if any(resolved.is_relative_to(folder) for folder in _site_folders()):
        return "installed"
    if any(resolved.is_relative_to(folder) for folder in _stdlib_folders()):
        return "stdlib"
    return "user"


def module_files(module_name: str) -> list[ModuleFile] | None:
    """The files importing ``module_name`` runs (each package's ``__init__``, then the module), located the way
    ``import`` would locate them but without running any; None when the module cannot be found."""
    files: list[ModuleFile] = []
    search: Any = None
    parts = module_name.split(".")
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        loaded = sys.modules.get(name)
        if loaded is not None:
            spec = getattr(loaded, "__spec__", None)
        elif i == 0:
            try:
                spec = importlib.util.find_spec(name)  # a top-level name: finding it runs nothing
            except (ImportError, ValueError):
                spec = None
        else:
            spec = importlib.machinery.PathFinder.find_spec(name, search)
        if spec is None:
            return None
        origin = Path(spec.origin) if spec.origin and spec.has_location else None
        if origin is not None or spec.submodule_search_locations is None:  # a namespace package has no file
            files.append(ModuleFile(name, origin, _kind(origin)))
        search = list(spec.submodule_search_locations or [])
    return files


def _import_paths(spec: Any) -> Iterator[tuple[str, str]]:
    from ..config.spec import is_import_path

    for field in IMPORT_PATH_FIELDS:
        section, attr = field.split(".")
        value = getattr(getattr(spec, section), attr, None)
        if isinstance(value, str) and is_import_path(value):
            yield field, value
    for candidate in getattr(spec.student, "candidates", ()):  # [[student.candidates]] archs are user code too
        if candidate.arch and is_import_path(candidate.arch):
            yield f"student.candidates.{candidate.name}.arch", candidate.arch


def code_identity(spec: Any) -> dict[str, dict[str, str]]:
    """``{field: {what: sha256}}`` for the study's user code and student weights: each user file an import path
    runs (by module name), and ``student.checkpoint`` (as ``"file"``). Installed packages and the standard library
    are not recorded. Imports nothing; call after ``imports.use_python_path``."""
    identity: dict[str, dict[str, str]] = {}
    for field, path in _import_paths(spec):
        files = module_files(path.partition(":")[0]) or []
        digests = {f.module: file_sha256(f.path) for f in files if f.kind == "user" and f.path and f.path.is_file()}
        if digests:
            identity[field] = digests
    checkpoint = spec.student.checkpoint
    if checkpoint is not None and Path(checkpoint).is_dir():
        checkpoint = weights_file(Path(checkpoint))
    if checkpoint is not None and Path(checkpoint).is_file():
        identity["student.checkpoint"] = {"file": file_sha256(Path(checkpoint))}
    files = hub_fingerprint(spec.student.arch)  # an hf/ folder or hf-config/ file: its config and weights
    if files:
        identity.setdefault("student.arch", {})["files"] = files
    candidates = getattr(spec.student, "candidate_specs", dict)()
    for name, student in candidates.items():  # each candidate's code and weights, as student.candidates.<name>.*
        own = code_identity(spec.model_copy(update={"student": student}))
        for field, digests in own.items():
            if field.startswith("student."):
                identity[f"student.candidates.{name}.{field.removeprefix('student.')}"] = digests
    return identity


def handed_student_identity(
    arch: str, num_classes: int, in_channels: int, image_size: int
) -> dict[str, dict[str, str]]:
    """``{"student.arch": {"python": sha256}}`` of one fresh build of the student factory handed to
    ``run_study`` under a fixed seed (its weights stand for its code); {} unless ``arch`` is ``python``."""
    import torch

    from .models import build_model, is_handed, state_dict_sha256

    if arch != "python" or not is_handed("student"):
        return {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model("python", num_classes, in_channels, image_size, role="student")
    return {"student.arch": {"python": state_dict_sha256(model.state_dict())}}


def check_importable_from_study(spec: Any, recorded: dict[str, dict[str, str]] | None, study_name: str) -> None:
    """KdsearchError unless each import path of a spec read back from a study is safe to import here: a user file
    whose sha256 the study recorded (and that matches), or an installed package; never the standard library.
    ``recorded`` None (a study made before kdsearch recorded its code) checks the standard library only."""
    for field, path in _import_paths(spec):
        module = path.partition(":")[0]
        files = module_files(module)
        if files is None:
            continue  # not here: importing it gives the usual "no module named" error
        for f in files:
            if f.kind == "stdlib":
                raise KdsearchError(
                    f"study {study_name!r} names {field} = {path!r}, in Python's standard library; kdsearch does not "
                    "import that from a stored study (whoever can write to the storage could run anything with it). "
                    "Give this command the study file with --spec PATH"
                )
            if f.kind != "user" or f.path is None or recorded is None:
                continue
            want = recorded.get(field, {}).get(f.module)
            if want is None:
                raise KdsearchError(
                    f"study {study_name!r} names {field} = {path!r}, but recorded no digest of {f.path}; kdsearch "
                    "imports user code from a stored study only when it matches the file the study was run with. "
                    "Give this command the study file with --spec PATH"
                )
            here = file_sha256(f.path)
            if here != want:
                raise KdsearchError(
                    f"{f.path} ({field} = {path!r}) is not the file study {study_name!r} was run with (sha256 "
                    f"{here[:12]}… here, {want[:12]}… in the study); put that version here, or start "
                    "a new study with --study NEW_NAME"
                )
