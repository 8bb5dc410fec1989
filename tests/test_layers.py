"""Checking a study is quick: ``kdsearch --help``, loading any shipped study and a spec error import no torch;
the torch-free catalog the spec reads says what the method and model registries hold."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from kdsearch.config.catalog import METHOD_CATALOG, MODEL_CATALOG, MethodInfo, ParamRange, check_catalog
from kdsearch.config.load import spec_from_dict
from kdsearch.distill.methods import KD, METHODS
from kdsearch.errors import KdsearchError
from kdsearch.nets.builtin import MODELS, light_nn
from kdsearch.registry import Registry

ROOT = REPO
STUDIES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "studies").glob("*.toml"))


def run_python(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter at the repository root (nothing imported yet)."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_every_shipped_study_loads_without_importing_torch():
    assert STUDIES, "no studies/*.toml found"
    result = run_python(
        "import sys, kdsearch.config.load\n"
        f"for path in {STUDIES!r}:\n"
        "    kdsearch.config.load.load_spec(path)\n"
        "    assert 'torch' not in sys.modules, f'loading {path} imported torch'\n"
    )
    assert result.returncode == 0, result.stderr


def test_help_and_a_spec_error_import_no_torch():
    result = run_python(
        "import sys\n"
        "import kdsearch.cli\n"
        "assert 'torch' not in sys.modules, 'import kdsearch.cli imported torch'\n"
        "for argv in (['--help'], ['run', '--set', 'student.epochs=-1'], ['run', '--set', 'student.arch=resnet9']):\n"
        "    sys.argv = ['kdsearch', *argv]\n"
        "    try:\n"
        "        kdsearch.cli.main()\n"
        "    except SystemExit:\n"
        "        pass\n"
        "    assert 'torch' not in sys.modules, f'kdsearch {argv} imported torch'\n"
    )
    assert result.returncode == 0, result.stderr
    assert "student.epochs: Input should be greater than or equal to 1" in result.stderr
    assert "student.arch: unknown model 'resnet9'" in result.stderr


# Modules that import torch only inside functions (the forbidden contract cannot tell a lazy import from an eager
# one): importing them stays light, checked here at run time.
LAZY_TORCH = ["kdsearch.cli", "kdsearch.runner", "kdsearch.parallel.workers", "kdsearch.parallel.local_workers"]


def torch_free_contract() -> dict:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    return next(c for c in contracts if c["id"] == "torch-free")


def test_the_torch_free_modules_import_no_torch_at_run_time():
    """The modules of the torch-free contract (pyproject.toml) and those that import torch lazily, each imported
    alone in a fresh interpreter."""
    contract = torch_free_contract()
    assert {"torch", "torchvision"} <= set(contract["forbidden_modules"])
    modules = [*contract["source_modules"], *LAZY_TORCH]
    assert {"kdsearch.config", "kdsearch.search.study", "kdsearch.search.results", "kdsearch.report"} <= set(modules)
    for module in modules:
        result = run_python(f"import sys, {module}\nassert 'torch' not in sys.modules")
        assert result.returncode == 0, f"{module} imports torch, but it is listed as torch-free"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with the project's contracts, on the ``kdsearch`` package found under ``root``."""
    exe = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(exe), str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_layers_hold_and_an_upward_import_fails_with_the_contracts_name(tmp_path):
    assert lint_imports(ROOT).returncode == 0
    copy = tmp_path / "kdsearch"
    shutil.copytree(ROOT / "kdsearch", copy, ignore=shutil.ignore_patterns("__pycache__"))
    study = copy / "search" / "study.py"
    study.write_text(study.read_text() + "\n\ndef _planted():\n    from ..report import page  # noqa: F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "kdsearch layers" in result.stdout and "BROKEN" in result.stdout
    assert "kdsearch.search.study -> kdsearch.report.page" in result.stdout
    (copy / "config" / "torchy.py").write_text("import torch  # noqa: F401\n")
    result = lint_imports(tmp_path)
    assert "kdsearch.config is not allowed to import torch" in result.stdout
    assert "kdsearch.config.torchy -> torch" in result.stdout
    (copy / "distill" / "tuned.py").write_text("import optuna  # noqa: F401\n")  # Optuna below search
    (copy / "ship" / "spawn.py").write_text("from ..parallel import workers  # noqa: F401\n")
    result = lint_imports(tmp_path)
    assert "kdsearch.distill.tuned -> optuna" in result.stdout
    assert "kdsearch.ship is not allowed to import kdsearch.parallel" in result.stdout
    (copy / "helpers2.py").write_text("")  # a module the layers do not place
    assert "helpers2" in lint_imports(tmp_path).stdout


def test_catalog_holds_every_registered_method_with_its_space_and_flags():
    assert set(METHOD_CATALOG) == set(METHODS.names())
    for name in METHODS:
        cls = METHODS.get(name)
        entry = METHOD_CATALOG[name]
        assert dict(entry.space) == dict(cls.space), name
        assert (entry.needs_teacher, entry.needs_features, entry.min_classes, entry.searchable) == (
            cls.needs_teacher,
            cls.needs_features,
            cls.min_classes,
            cls.searchable,
        ), name


def test_catalog_holds_every_registered_model_with_its_feature_layer():
    assert set(MODEL_CATALOG) == set(MODELS.names())
    for name in MODELS:
        assert MODEL_CATALOG[name] == MODELS.meta(name).get("feature_layer", ""), name


def test_a_registry_that_drifts_from_its_catalog_is_refused():
    toys: Registry[int] = Registry("toy")
    toys.register("a")(1)
    toys.register("b")(2)
    check_catalog(toys, {"a": 1, "b": 2}, toys.get)
    with pytest.raises(RuntimeError, match=r"'b' is registered but not in the catalog.*'c' is in the catalog"):
        check_catalog(toys, {"a": 1, "c": 3}, toys.get)
    with pytest.raises(RuntimeError, match=r"'b' is registered as 2 but the catalog says 5.*change both"):
        check_catalog(toys, {"a": 1, "b": 5}, toys.get)


@pytest.fixture
def own_registrations(monkeypatch):
    """Registrations made in a test are undone after it."""
    for registry in (METHODS, MODELS):
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
        monkeypatch.setattr(registry, "_meta", dict(registry._meta))


def test_a_method_registered_from_python_is_searched_with_its_own_space(own_registrations):
    @METHODS.register("my_kd")
    class MyKD(KD):
        name = "my_kd"
        space = {"temperature": ParamRange(1.0, 8.0, log=True), "alpha": ParamRange(0.0, 1.0)}

    spec = spec_from_dict({"search": {"methods": ["kd", "my_kd"]}, "methods": {"my_kd": {"temperature": [2, 4]}}})
    assert spec.method_space("my_kd")["temperature"] == ParamRange(2.0, 4.0, log=True)
    assert spec.method_space("my_kd")["alpha"] == ParamRange(0.0, 1.0)
    with pytest.raises(KdsearchError, match=r"methods\.my_kd\.beta: my_kd has no parameter 'beta'"):
        spec_from_dict({"search": {"methods": ["my_kd"]}, "methods": {"my_kd": {"beta": [1, 2]}}})


def test_a_model_registered_from_python_is_a_known_arch(own_registrations):
    MODELS.register("my_net", feature_layer="features")(light_nn)
    assert spec_from_dict({"student": {"arch": "my_net"}}).student.arch == "my_net"
    with pytest.raises(KdsearchError, match=r"unknown model 'my_nett'; give a known model \(.*my_net, "):
        spec_from_dict({"student": {"arch": "my_nett"}})


def test_method_info_describes_a_registered_class():
    assert MethodInfo.of(KD) == METHOD_CATALOG["kd"]
