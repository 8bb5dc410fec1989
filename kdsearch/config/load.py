"""Reading a study: a dict, a TOML file (with its folder on the import path) or ``--set`` overrides, into a
validated ``StudySpec``; every mistake is one KdsearchError naming the field or the file."""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import ValidationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

from ..errors import KdsearchError
from .spec import StudySpec


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check its spelling and section)"
        lines.append(f"{where}: {msg}")
    return "; ".join(lines)


def spec_from_dict(raw: dict, *, source: str = "spec") -> StudySpec:
    """Validate a dict into a StudySpec; errors become one KdsearchError naming each bad field."""
    try:
        return StudySpec.model_validate(raw)
    except ValidationError as err:
        raise KdsearchError(f"{source}: {_format_validation_error(err)}") from None


def load_spec(path: Path | str) -> StudySpec:
    """Read and validate a study TOML file (KdsearchError on a missing file, bad TOML or bad field)."""
    path = Path(path)
    if not path.is_file():
        raise KdsearchError(f"study file {path} not found; pass an existing TOML file (the ready ones are in studies/)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # -sig: a byte-order mark from some editors
    except (OSError, UnicodeDecodeError) as err:
        raise KdsearchError(f"cannot read study file {path}: {err}; pass a readable UTF-8 TOML file") from None
    except tomllib.TOMLDecodeError as err:
        raise KdsearchError(f"{path} is not valid TOML: {err}; fix the line it names") from None
    if not raw:  # an empty file (or only comments) would silently run every built-in default
        raise KdsearchError(
            f"study file {path} sets nothing; give it at least a name and [data] (start from a copy of "
            "studies/fashion_mnist.toml)"
        )
    spec = spec_from_dict(raw, source=str(path))
    return with_study_folder(spec, path.parent)


def with_study_folder(spec: StudySpec, folder: Path) -> StudySpec:
    """``spec`` with ``runtime.python_path`` made absolute against the study file's ``folder``, which comes
    first: a study's own modules (import-path models, data factories) are found wherever kdsearch runs."""
    folder = folder.expanduser().resolve()
    paths = [folder] + [p if p.is_absolute() else (folder / p).resolve() for p in spec.runtime.python_path]
    unique = list(dict.fromkeys(paths))
    return spec.model_copy(update={"runtime": spec.runtime.model_copy(update={"python_path": unique})})


def apply_overrides(raw: dict, assignments: list[str]) -> dict:
    """Apply ``section.field=value`` assignments (value in TOML syntax, bare words as strings) to a spec dict."""
    out = raw
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        key = key.strip()
        if not sep or not key:
            raise KdsearchError(f"--set {assignment!r}: write it as section.field=value, e.g. --set student.epochs=2")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()  # a bare word: a string
        out = set_field(out, key, value)
    return out


def set_field(raw: dict, key: str, value: object) -> dict:
    """A copy of the spec dict ``raw`` with the dotted field ``key`` (e.g. ``student.epochs``) set to ``value``."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    *parents, leaf = key.split(".")
    node = out
    for part in parents:
        child = node.get(part)
        node[part] = child = dict(child) if isinstance(child, dict) else {}
        node = child
    node[leaf] = value
    return out
