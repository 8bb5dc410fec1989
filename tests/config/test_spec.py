"""A study spec is validated up front, with messages that name the field and the fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kdsearch.config.load import load_spec, spec_from_dict
from kdsearch.config.spec import StudySpec
from kdsearch.errors import KdsearchError


def test_default_spec_is_the_fashion_mnist_study():
    spec = StudySpec()
    assert spec.name == "fashion_mnist"
    assert spec.search.methods == ["kd"]
    space = spec.method_space("kd")
    assert (space["temperature"].low, space["temperature"].high, space["temperature"].log) == (0.5, 20.0, True)
    assert (space["alpha"].low, space["alpha"].high) == (0.0, 1.0)


def test_shipped_default_study_file_loads():
    spec = load_spec("studies/fashion_mnist.toml")
    assert spec.data.labeled == 2000 and spec.data.unlabeled == 8000
    assert spec.search.trials == 50


def test_range_override_replaces_the_default():
    spec = spec_from_dict({"methods": {"kd": {"temperature": [1, 4]}}})
    assert spec.method_space("kd")["temperature"].high == 4
    assert spec.method_space("kd")["alpha"].high == 1.0


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"methods": {"kd": {"alpha": [0.0, 1.5]}}}, "methods.kd.alpha: alpha weights the hard-label loss"),
        (
            {"methods": {"kd": {"temperature": [0.0, 4.0]}}},
            "methods.kd.temperature: this parameter is searched on a log scale",
        ),
        ({"methods": {"kd": {"temperature": [4.0, 2.0]}}}, "must have low < high"),
        ({"methods": {"kd": {"tau": [1.0, 2.0]}}}, "methods.kd.tau: kd has no parameter 'tau'"),
        ({"search": {"methods": ["kdd"]}}, "search.methods: unknown method 'kdd'"),
        ({"student": {"arch": "resnet9000"}}, "student.arch: unknown model 'resnet9000'"),
        ({"search": {"objective": "loss"}}, "search.objective"),
        ({"search": {"trails": 3}}, "search.trails: unknown field"),
        ({"data": {"train_limit": 100, "val_size": 50, "labeled": 40, "unlabeled": 20}}, "exceeds train_limit"),
        ({"methods": {"kd": {"temperature": [0.5, float("inf")]}}}, "must be finite, within ±1e+06"),
        ({"methods": {"kd": {"temperature": [1e300, 1e301]}}}, "must be finite, within ±1e+06"),
        ({"search": {"sampler_seed": -1}}, "search.sampler_seed: Input should be greater than or equal to 0"),
        ({"data": {"split_seed": 2**40}}, "data.split_seed: Input should be less than or equal to 2147483647"),
        ({"name": "../../elsewhere"}, "name: '../../elsewhere' cannot name a study"),
        ({"final": {"baselines": ["untuned_kd"]}}, "final.baselines: must include 'scratch'"),
        ({"final": {"baselines": ["scratch", "tuned"]}}, "final.baselines.1: Input should be"),
        ({"final": {"untuned_kd": {"temperature": 4.0}}}, "final.untuned_kd: needs exactly temperature"),
        ({"final": {"untuned_kd": {"temperature": 4.0, "alpha": 2.0}}}, "alpha in [0, 1]"),
    ],
)
def test_bad_field_is_named_in_the_error(raw, message):
    with pytest.raises(KdsearchError, match=re.escape(message)):
        spec_from_dict(raw, source="my.toml")


def test_missing_file_and_bad_toml_are_clear(tmp_path):
    with pytest.raises(KdsearchError, match="not found"):
        load_spec(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(KdsearchError, match="is not valid TOML"):
        load_spec(bad)


def test_an_empty_study_file_is_an_error_naming_it_not_the_defaults(tmp_path):
    for text in ("", "# my study, to be written\n\n"):
        empty = tmp_path / "empty.toml"
        empty.write_text(text)
        with pytest.raises(KdsearchError, match=rf"study file {empty} sets nothing; .*studies/fashion_mnist.toml"):
            load_spec(empty)
    (tmp_path / "named.toml").write_text('name = "mine"\n')
    assert load_spec(tmp_path / "named.toml").name == "mine"  # one field is enough


def test_set_overrides_take_toml_values_and_bare_words():
    from kdsearch.config.load import apply_overrides

    raw = apply_overrides(
        StudySpec().model_dump(mode="json"),
        ["student.epochs=2", 'search.methods=["kd", "dkd"]', "search.objective=auc", "methods.kd.alpha=[0.1, 0.9]"],
    )
    spec = spec_from_dict(raw)
    assert spec.student.epochs == 2 and spec.search.methods == ["kd", "dkd"] and spec.search.objective == "auc"
    assert spec.method_space("kd")["alpha"].low == 0.1
    with pytest.raises(KdsearchError, match="section.field=value"):
        apply_overrides({}, ["student.epochs"])


def test_paths_starting_with_tilde_mean_the_home_folder():
    spec = spec_from_dict(
        {"data": {"root": "~/fmnist"}, "runtime": {"cache_dir": "~/kd-cache"}, "output_dir": "~/runs/x"}
    )
    home = Path.home()
    assert (spec.data.root, spec.runtime.cache_dir, spec.output_dir) == (
        home / "fmnist",
        home / "kd-cache",
        home / "runs/x",
    )


def test_a_study_that_leaves_search_settings_to_defaults_unlike_the_default_studys_is_told(tmp_path):
    from kdsearch.config.load import defaults_unlike_the_default_study
    from kdsearch.runner import SHIPPED_DEFAULT_SPEC

    mine = tmp_path / "my.toml"
    mine.write_text('name = "mine"\n[data]\nlabeled = 100\n[final]\nseeds = 4\n')
    lines = defaults_unlike_the_default_study(mine, ["search.pruner_warmup_epochs=0"], SHIPPED_DEFAULT_SPEC)
    assert "search.methods = ['kd'] (built-in default; the default study sets ['kd', 'lskd', 'dkd'])" in lines
    assert "final.students = 'each' (built-in default; the default study sets 'best')" in lines
    assert not any(line.startswith(("final.seeds", "search.pruner_warmup_epochs")) for line in lines)  # set
    assert defaults_unlike_the_default_study(SHIPPED_DEFAULT_SPEC, None, SHIPPED_DEFAULT_SPEC) == []


def test_relative_paths_in_a_study_file_mean_its_folder_wherever_kdsearch_runs(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "my.toml").write_text(
        'name = "rel"\noutput_dir = "out"\n[data]\nsource = "idx"\nroot = "data"\n'
        '[teacher]\ncheckpoint = "weights/teacher.pt"\n[student]\ncheckpoint = "/abs/student.pt"\n'
        '[runtime]\ncache_dir = "cache"\npython_path = ["lib"]\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = load_spec(Path("..") / "project" / "my.toml")
    assert spec.output_dir == folder / "out" and spec.data.root == folder / "data"
    assert spec.teacher.checkpoint == folder / "weights" / "teacher.pt"
    assert spec.student.checkpoint == Path("/abs/student.pt")  # absolute: as written
    assert spec.runtime.cache_dir == folder / "cache" and spec.runtime.python_path == [folder, folder / "lib"]
    assert spec.resolved_storage() == f"sqlite:///{folder / 'out' / 'study.db'}"


def test_the_catalog_check_names_each_disagreement() -> None:
    from kdsearch.config.catalog import check_catalog
    from kdsearch.registry import Registry

    registry: Registry = Registry("model")
    for name in ("a", "b", "c"):
        registry.register(name, feature_layer=f"{name}_layer")(lambda: None)
    layers = lambda name: registry.meta(name)["feature_layer"]  # noqa: E731
    check_catalog(registry, {"a": "a_layer", "b": "b_layer", "c": "c_layer"}, layers)  # agreeing: no error
    with pytest.raises(RuntimeError) as err:
        check_catalog(registry, {"a": "a_layer", "b": "other", "d": "d_layer"}, layers)
    message = str(err.value)
    assert message.startswith("the model registry and kdsearch/config/catalog.py disagree: ")
    assert "'c' is registered but not in the catalog" in message
    assert "'d' is in the catalog but not registered" in message
    assert "'b' is registered as 'b_layer' but the catalog says 'other'" in message
    assert "'a'" not in message and message.count("; ") == 2  # the three disagreements, one after the other
    assert message.endswith("Specs are validated against the catalog (torch-free), so change both")


def test_model_names_include_those_registered_at_run_time() -> None:
    from kdsearch.config.catalog import MODEL_CATALOG, is_model, model_names
    from kdsearch.nets.models import MODELS

    MODELS.register("run_time_net_xyz", feature_layer="features")(lambda n, c, s: None)
    try:
        names = model_names()
        assert "run_time_net_xyz" in names and set(MODEL_CATALOG) <= set(names) and names == sorted(names)
        assert is_model("run_time_net_xyz") and not is_model("no_such_net_xyz")
    finally:
        MODELS._entries.pop("run_time_net_xyz", None)  # the registry has no unregister: a test-only clean-up
        MODELS._meta.pop("run_time_net_xyz", None)
