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
from .model_spec import HF_PATH_PREFIXES
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


STUDY_RELATIVE_PATHS = (  # (section or "" for the top level, field): paths a study file gives relative to itself
    ("data", "root"),
    ("teacher", "checkpoint"),
    ("student", "checkpoint"),
    ("runtime", "cache_dir"),
    ("", "output_dir"),
)


def with_study_folder(spec: StudySpec, folder: Path) -> StudySpec:
    """``spec`` with every relative path of the study file made absolute against its ``folder``: the paths of
    ``STUDY_RELATIVE_PATHS`` and ``runtime.python_path`` (the folder itself first, so a study's own modules are
    found wherever kdsearch runs). ``data.args`` are the factory's own and stay as written."""
    folder = folder.expanduser().resolve()

    def absolute(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (folder / p).resolve()

    paths = [folder] + [absolute(p) for p in spec.runtime.python_path]
    update: dict = {"": {}, "runtime": {"python_path": list(dict.fromkeys(paths))}}
    for section, field in STUDY_RELATIVE_PATHS:
        owner = getattr(spec, section) if section else spec
        update.setdefault(section, {})[field] = absolute(getattr(owner, field))
    for role in ("teacher", "student"):  # hf/<folder>, hf-config/<folder or .json>: paths too
        arch = getattr(spec, role).arch
        prefix = next((p for p in HF_PATH_PREFIXES if arch.startswith(p)), None)
        if prefix and arch[len(prefix) :].strip():
            update.setdefault(role, {})["arch"] = prefix + str(absolute(Path(arch[len(prefix) :]).expanduser()))
    if spec.student.candidates:  # a candidate's checkpoint and hf/ folder are paths of the study file too
        candidates = []
        for c in spec.student.candidates:
            arch = c.arch
            prefix = next((p for p in HF_PATH_PREFIXES if arch and arch.startswith(p)), None)
            if arch and prefix and arch[len(prefix) :].strip():
                arch = prefix + str(absolute(Path(arch[len(prefix) :]).expanduser()))
            candidates.append(c.model_copy(update={"checkpoint": absolute(c.checkpoint), "arch": arch}))
        update.setdefault("student", {})["candidates"] = candidates
    top = update.pop("")
    sections = {name: getattr(spec, name).model_copy(update=fields) for name, fields in update.items()}
    return spec.model_copy(update={**sections, **top})


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


SEARCH_DEFAULTS_TO_SAY = ("search.methods", "search.pruner_warmup_epochs", "final.seeds", "final.students")


def defaults_unlike_the_default_study(path: Path, overrides: list[str] | None, default_study: Path) -> list[str]:
    """One line per setting that ``path`` (and its ``--set`` overrides) leaves to a built-in default that differs
    from what the shipped default study sets, e.g. "search.methods = ['kd'] (built-in default; the default study
    sets ['kd', 'lskd', 'dkd'])": a study without [search] silently searching kd only is a surprise otherwise."""
    if path.resolve() == default_study.resolve() or not default_study.is_file():
        return []
    try:
        mine = tomllib.loads(path.read_text(encoding="utf-8-sig"))
        shipped = tomllib.loads(default_study.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []
    overridden = {o.partition("=")[0].strip() for o in overrides or []}
    builtin = StudySpec().model_dump(mode="json")
    lines = []
    candidates = bool(mine.get("student", {}).get("candidates"))
    for key in SEARCH_DEFAULTS_TO_SAY:
        section, field = key.split(".")
        if key == "final.students" and candidates:  # with candidates, each front member's best trial is retrained
            continue
        if field in mine.get(section, {}) or key in overridden or field not in shipped.get(section, {}):
            continue
        default, theirs = builtin[section][field], shipped[section][field]
        if default != theirs:
            lines.append(f"{key} = {default!r} (built-in default; the default study sets {theirs!r})")
    return lines
