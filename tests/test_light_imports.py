"""Checking a study is quick: ``kdsearch --help``, loading any shipped study and a spec error import no torch;
the torch-free catalog the spec reads says what the method and model registries hold."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kdsearch.catalog import METHOD_CATALOG, MODEL_CATALOG, MethodInfo, ParamRange, check_catalog
from kdsearch.errors import KdsearchError
from kdsearch.methods import KD, METHODS
from kdsearch.models import MODELS, light_nn
from kdsearch.registry import Registry
from kdsearch.spec import spec_from_dict

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "studies").glob("*.toml"))


def run_python(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter at the repository root (nothing imported yet)."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_every_shipped_study_loads_without_importing_torch():
    assert STUDIES, "no studies/*.toml found"
    result = run_python(
        "import sys, kdsearch.spec\n"
        f"for path in {STUDIES!r}:\n"
        "    kdsearch.spec.load_spec(path)\n"
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


def test_the_modules_the_readme_marks_torch_free_import_no_torch():
    """README's layout table marks with ○ the modules that import no torch; each is imported alone to check."""
    import re

    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("\n\n**Working on kdsearch", 1)[0]
    marked = sorted(set(re.findall(r"`(\w+)\.py` ○", layout)))
    assert {"study", "results", "report", "workers", "runner", "cli"} <= set(marked)
    for module in marked:
        result = run_python(f"import sys, kdsearch.{module}\nassert 'torch' not in sys.modules")
        assert result.returncode == 0, f"kdsearch.{module} imports torch, but README's layout marks it ○"


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
