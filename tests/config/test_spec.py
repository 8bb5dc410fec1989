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


# --- whole messages of the checks mutmut found untested here (issue 18) ---------------------------------------

TWO = {"candidates": [{"name": "a", "arch": "light_nn"}, {"name": "b", "arch": "deep_nn"}]}
COSTS = "params, flops, size_mb, latency_ms, onnx_latency_ms"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"student": TWO, "search": {"strategy": "motpe"}},
            "search.strategy = 'motpe' searches search.objectives; set them, e.g. "
            'objectives = ["accuracy", "onnx_latency_ms"] (or drop the strategy)',
        ),
        (
            {"student": TWO, "search": {"objectives": ["accuracy", "weight"], "strategy": "motpe"}},
            f"search.objectives = ['accuracy', 'weight']: name a validation metric (accuracy or auc) and a cost "
            f'({COSTS}), e.g. ["accuracy", "onnx_latency_ms"]',
        ),
        (
            {"student": TWO, "search": {"objectives": ["auc", "params", "flops"], "strategy": "motpe"}},
            "search.objectives = ['auc', 'params', 'flops']: name a validation metric",
        ),
        (
            {"student": TWO, "search": {"objectives": ["params", "accuracy"], "strategy": "motpe"}},
            "search.objectives = ['params', 'accuracy']: name a validation metric (accuracy or auc)",
        ),
        (
            {"search": {"objectives": ["accuracy", "params"], "strategy": "motpe"}},
            "search.objectives trade accuracy against the cost of [[student.candidates]]; list candidates, or "
            "drop search.objectives",
        ),
        (
            {"student": TWO, "search": {"objectives": ["accuracy", "params"], "strategy": "motpe", "objective": "auc"}},
            "search.objectives = ['accuracy', 'params'] disagrees with search.objective = 'auc' / final.cost = "
            "'params'; drop those two (the objectives set them)",
        ),
        (
            {"student": TWO, "search": {"objectives": ["accuracy", "params"]}, "final": {"cost": "flops"}},
            "disagrees with search.objective = 'accuracy' / final.cost = 'flops'",
        ),
        (
            {"student": TWO, "search": {"objectives": ["accuracy", "params"], "strategy": "nsga2", "pruner": "median"}},
            "search.strategy = 'nsga2' is a multi-objective study, which Optuna cannot prune, but search.pruner = "
            '\'median\'; set pruner = "none", or strategy = "per_candidate" (prunes per student)',
        ),
        ({"student": {"arch": "light_nn", "arch_args": {"width": True}}}, "arch_args.width = True: give a channel"),
        ({"student": {"arch": "light_nn", "arch_args": {"width": "x"}}}, "arch_args.width = 'x': give a channel"),
        ({"student": {"arch": "light_nn", "arch_args": {"width": 0}}}, "arch_args.width = 0: give a channel"),
        (
            {"student": {"arch": "light_nn", "arch_args": {"width": 64.5}}},
            "arch_args.width = 64.5: give a channel multiplier > 0 (and at most 64), e.g. 0.5",
        ),
        (
            {"student": {"arch": "light_nn", "arch_args": {"depth": 2, "bias": 1, "width": 1}}},
            "arch_args: light_nn takes only width (a channel multiplier), not bias, depth",
        ),
    ],
)
def test_objectives_and_width_checks_say_the_whole_fix(raw, message):
    with pytest.raises(KdsearchError) as err:
        spec_from_dict(raw, source="my.toml")
    assert message in str(err.value)


def test_objectives_set_the_objective_and_cost_and_a_per_candidate_study_may_prune():
    for strategy in ("per_candidate", "motpe"):
        spec = spec_from_dict({"student": TWO, "search": {"objectives": ["auc", "flops"], "strategy": strategy}})
        assert (spec.search.objective, spec.final.cost) == ("auc", "flops")
    spec = spec_from_dict(
        {"student": TWO, "search": {"objectives": ["accuracy", "params"], "strategy": "nsga2", "pruner": "none"}}
    )  # asked for no pruning: fine
    assert spec.search.pruner == "none"
    spec = spec_from_dict({"student": TWO, "search": {"objectives": ["accuracy", "params"], "pruner": "median"}})
    assert spec.search.strategy == "per_candidate" and spec.search.pruner == "median"
    for width in (64, 0.5, 2):  # the largest, a fraction, an int
        assert spec_from_dict({"student": {"arch": "light_nn", "arch_args": {"width": width}}})


def test_a_fixed_number_for_a_range_fixes_it_and_keeps_its_scale():
    space = spec_from_dict({"methods": {"kd": {"temperature": 4, "alpha": [0.2, 0.6]}}}).method_space("kd")
    assert (space["temperature"].low, space["temperature"].high, space["temperature"].log) == (4.0, 4.0, True)
    assert (space["alpha"].low, space["alpha"].high, space["alpha"].log) == (0.2, 0.6, False)
    from kdsearch.config.catalog import method_names

    with pytest.raises(KdsearchError) as err:
        StudySpec().method_space("kdd")
    assert str(err.value) == f"unknown method 'kdd'; known methods: {', '.join(method_names())}"


def test_hub_kind_is_the_prefix_of_a_named_hub_model_only():
    from kdsearch.config.model_spec import hub_kind

    assert [hub_kind(n) for n in ("timm/resnet18", "hf/my_vit", "hf-config/vit.json")] == ["timm/", "hf/", "hf-config/"]
    assert [hub_kind(n) for n in ("resnet18", "timm/", "timm/  ", "mynets:Student")] == [None] * 4


def test_the_output_folder_is_runs_name_unless_given_and_holds_the_study_file(tmp_path):
    spec = spec_from_dict({"name": "mine"})
    assert spec.resolved_output_dir() == Path("runs") / "mine"
    assert spec.resolved_storage() == f"sqlite:///{(Path('runs') / 'mine' / 'study.db').resolve()}"
    given = spec_from_dict({"output_dir": str(tmp_path / "out")})
    assert given.resolved_output_dir() == tmp_path / "out"
    assert spec_from_dict({"storage": "postgresql://u@h/db"}).resolved_storage() == "postgresql://u@h/db"


def test_a_candidate_keeps_the_students_training_and_its_arch_settings_only_for_the_same_arch():
    spec = spec_from_dict(
        {
            "student": {
                "arch": "light_nn",
                "arch_args": {"width": 0.5},
                "feature_layer": "features",
                "epochs": 3,
                "lr": 0.01,
                "checkpoint_ignore": ["head."],
                "candidates": [
                    {"name": "same"},
                    {"name": "other", "arch": "deep_nn"},
                    {
                        "name": "own",
                        "arch": "light_nn",
                        "arch_args": {"width": 2},
                        "feature_layer": "x",
                        "checkpoint": "w.pt",
                        "checkpoint_ignore": ["fc."],
                        "pretrained": False,
                    },
                ],
            }
        }
    )
    made = spec.student.candidate_specs()
    assert list(made) == ["same", "other", "own"]
    seen = {n: (c.arch, c.arch_args, c.feature_layer, c.checkpoint, c.checkpoint_ignore) for n, c in made.items()}
    assert seen == {
        "same": ("light_nn", {"width": 0.5}, "features", None, []),
        "other": ("deep_nn", {}, None, None, []),  # another arch: none of the student's arch settings
        "own": ("light_nn", {"width": 2}, "x", Path("w.pt"), ["fc."]),
    }
    assert all(c.epochs == 3 and c.lr == 0.01 and not c.candidates and not c.pretrained for c in made.values())
    assert spec_from_dict({}).student.candidate_specs() == {}


def test_image_channels_are_the_given_ones_else_the_sources_own():
    assert spec_from_dict({}).data.resolved_channels() == 1  # idx (Fashion-MNIST): grey
    assert spec_from_dict({"data": {"channels": 3}}).data.resolved_channels() == 3
    assert spec_from_dict({"data": {"source": "cifar10", "root": "/data/cifar"}}).data.resolved_channels() == 3
