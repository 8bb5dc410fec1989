"""The docs cannot drift: the generated reference pages match the code, every study-file field and command is
documented, README stays a short landing page whose links work, the architecture page names every module with
the torch-free marks of the contracts, and the site builds with ``mkdocs build --strict``."""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import REPO

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

DOCS = REPO / "docs"
README = REPO / "README.md"
README_MAX_LINES = 150
REGENERATE = ".venv/bin/python docs/gen_reference.py"


def load_generator():
    """``docs/gen_reference.py`` as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = load_generator()


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block of a Markdown text."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)


def section(text: str, heading: str) -> str:
    """The Markdown from ``heading`` (a whole line) to the next heading of the same or a higher level (lines of
    fenced code blocks, such as ``# comments``, are not headings)."""
    lines = text.splitlines(keepends=True)
    level = len(heading.split(" ")[0])
    start = lines.index(heading + "\n")
    fenced = False
    for end in range(start + 1, len(lines)):
        line = lines[end]
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(rf"#{{1,{level}}} ", line):
            break
    else:
        end = len(lines)
    return "".join(lines[start:end])


@pytest.mark.parametrize("page", sorted(gen.PAGES))
def test_the_generated_reference_page_matches_the_code(page):
    path = DOCS / page
    assert path.is_file(), f"docs/{page} is missing; generate it with: {REGENERATE}"
    want, have = gen.PAGES[page](), path.read_text(encoding="utf-8")
    if have != want:
        diff = "".join(
            list(difflib.unified_diff(have.splitlines(True), want.splitlines(True), "checked in", "generated now"))[:40]
        )
        pytest.fail(f"docs/{page} is out of date with the code; regenerate it with: {REGENERATE}\n{diff}")


def test_the_generator_is_deterministic_and_has_no_machine_specific_text():
    """Two fresh interpreters with other terminal widths and hash seeds write the same pages, and the pages
    hold no path of this machine and no date."""
    code = "import json, gen_reference as g; print(json.dumps({p: r() for p, r in g.PAGES.items()}))"
    outputs = []
    for columns, seed in (("60", "1"), ("220", "2")):
        env = {**os.environ, "COLUMNS": columns, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)}
        run = subprocess.run([sys.executable, "-c", code], cwd=DOCS, env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        outputs.append(run.stdout)
    assert outputs[0] == outputs[1], "the generated pages depend on the terminal width or the hash seed"
    pages = json.loads(outputs[0])
    assert set(pages) == set(gen.PAGES) and all(pages.values())
    home = Path.home()
    leaks = [str(REPO), tempfile.gettempdir() + os.sep] + ([str(home)] if len(home.parts) > 1 else [])
    for page, text in pages.items():
        for leak in leaks:
            assert leak not in text, f"{page} contains {leak!r}"
        assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), f"{page} contains a date"


def test_every_study_file_field_is_on_the_checked_in_page():
    """Reads the checked-in page: a field added to the spec without regenerating the page fails here."""
    page = (DOCS / "reference" / "study-file.md").read_text(encoding="utf-8")
    missing = [name for name in gen.spec_field_names() if f"| `{name}` |" not in page]
    assert not missing, f"docs/reference/study-file.md does not list {missing}; regenerate it with: {REGENERATE}"
    for name, _ in gen.sections():
        assert f"\n## [{name}]\n" in page, f"no section [{name}] on the study-file page"
    assert "\n## [methods.&lt;method&gt;]\n" in page


def test_every_field_has_a_description_and_no_markup_that_breaks_a_table():
    from kdsearch.config.spec import StudySpec

    models = [StudySpec] + [model for _, model in gen.sections()]
    for model in models:
        for name, field in model.model_fields.items():
            if name in dict(gen.sections()):
                continue
            assert field.description, f"{model.__name__}.{name} has no description= (kdsearch/config/spec.py)"
            assert "\n" not in field.description, f"{model.__name__}.{name}: a description is one line"


def test_every_command_and_option_is_on_the_checked_in_cli_page():
    import typer

    from kdsearch.cli import app

    page = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert f"\n## kdsearch {name}\n" in page, f"kdsearch {name} is missing; regenerate with: {REGENERATE}"
        part = section(page, f"## kdsearch {name}")
        for param in command.params:
            if not getattr(param, "hidden", False):
                assert f"`{param.opts[0]}`" in part, f"kdsearch {name} {param.opts[0]} is not on docs/reference/cli.md"
    for param in group.params:
        assert f"`{param.opts[0]}`" in section(page, "## Global options")


def test_readme_is_a_short_landing_page_with_the_two_commands():
    text = README.read_text(encoding="utf-8")
    lines = text.count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines; keep it a landing page under {README_MAX_LINES} and move the rest to docs/"
    )
    two = section(text, "## Two commands")
    commands = [body for lang, body in fenced_blocks(two) if lang == "bash"]
    assert commands, "README's 'Two commands' section has no bash block"
    assert re.search(r"^make run\b", commands[0], flags=re.M) and re.search(r"^make test\b", commands[0], flags=re.M)
    # the docs site's landing page repeats the section word for word
    assert section((DOCS / "index.md").read_text(encoding="utf-8"), "## Two commands") == two, (
        "the 'Two commands' sections of README.md and docs/index.md differ; keep them the same"
    )
    assert "mkdocs serve" in text


def test_readme_links_into_docs_point_at_files_that_exist():
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)\s]*)?\)", text)
    local = [link for link in links if "://" not in link and not link.startswith("mailto:")]
    assert any(link.startswith("docs/") for link in local), "README links to no page of docs/"
    broken = [link for link in local if not (REPO / link).exists()]
    assert not broken, f"README.md links to missing files: {broken}"
    pages = {p.relative_to(REPO).as_posix() for p in DOCS.rglob("*.md")}
    unlinked = sorted(pages - set(local))
    assert not unlinked, f"README.md links to no {unlinked}: add them to its Documentation table"


def test_the_example_on_the_own_models_page_is_a_valid_study():
    """The blocks tests/test_python_api.py runs (slow) are there, and the study file validates (fast)."""
    from kdsearch.config.load import spec_from_dict

    blocks = [body for _, body in fenced_blocks((DOCS / "own-models.md").read_text(encoding="utf-8"))]
    for first in ("# mynets.py", "# mydata.py", "# my.toml"):
        assert any(b.startswith(first) for b in blocks), f"docs/own-models.md has no block starting with {first!r}"
    toml = next(b for b in blocks if b.startswith("# my.toml"))
    spec = spec_from_dict(tomllib.loads(toml))
    assert spec.data.source == "python" and spec.teacher.arch == "mynets:Teacher"
    for block in blocks:
        if block.startswith(("# mynets.py", "# mydata.py")):
            ast.parse(block)


def test_the_default_study_numbers_in_the_docs_match_the_study_file():
    study = tomllib.loads((REPO / "studies" / "fashion_mnist.toml").read_text(encoding="utf-8"))
    running = " ".join((DOCS / "running.md").read_text(encoding="utf-8").split())  # line breaks as spaces
    seeds, warmup = study["final"]["seeds"], study["search"]["pruner_warmup_epochs"]
    assert f"(**{seeds}** in the default study" in running, f"running.md should say final.seeds = {seeds}"
    assert f"`pruner_warmup_epochs = {warmup}`" in running, f"running.md should say pruner_warmup_epochs = {warmup}"
    assert f"distills for {study['student']['epochs']} epochs" in running
    assert f"{study['data']['labeled']:,} labeled" in running and f"{study['data']['unlabeled']:,} unlabeled" in running
    assert f"validation split of {study['data']['val_size']:,}" in running
    assert f'final.students = "{study["final"]["students"]}"` in the default' in running


def _documented_modules(page: str) -> dict[str, str]:
    """Module path → its mark on the architecture page ('○', '◐' or '') from the module table's rows."""
    found: dict[str, str] = {}
    for row in re.findall(r"^\| (`kdsearch/[^|]*) \|", page, flags=re.M):
        mark = "○" if "○" in row else "◐" if "◐" in row else ""
        names = re.findall(r"`([\w/]+\.py)`", row)
        folder = names[0].rsplit("/", 1)[0]
        for name in names:
            found[name if "/" in name else f"{folder}/{name}"] = mark
    return found


def _module_name(path: str) -> str:
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def test_the_architecture_page_names_every_module_with_its_torch_marks():
    page = (DOCS / "architecture.md").read_text(encoding="utf-8")
    documented = _documented_modules(page)
    actual = {
        p.relative_to(REPO).as_posix()
        for p in (REPO / "kdsearch").rglob("*.py")
        if p.name != "__init__.py" or p.parent.name == "data"  # data/__init__.py holds load_splits
    }
    assert not actual - set(documented), f"docs/architecture.md does not name {sorted(actual - set(documented))}"
    assert not set(documented) - actual, (
        f"docs/architecture.md names missing modules {sorted(set(documented) - actual)}"
    )

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = {c["id"]: c for c in pyproject["tool"]["importlinter"]["contracts"]}
    free = contracts["torch-free"]["source_modules"]

    def torch_free(path: str) -> bool:
        name = _module_name(path)
        return any(name == m or name.startswith(m + ".") for m in free)

    layers_test = ast.parse((REPO / "tests" / "test_layers.py").read_text(encoding="utf-8"))
    lazy = next(
        ast.literal_eval(node.value)
        for node in layers_test.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "LAZY_TORCH" for t in node.targets)
    )
    for path, mark in documented.items():
        want = "○" if torch_free(path) else "◐" if _module_name(path) in lazy else ""
        assert mark == want, (
            f"docs/architecture.md marks {path} {mark or 'unmarked'}; the contracts say {want or 'unmarked'}"
        )
    for layer in contracts["layers"]["layers"]:
        assert re.search(rf"^{re.escape(layer)}\b", page, flags=re.M), f"layer {layer!r} is not on docs/architecture.md"


def test_mkdocs_build_strict_passes(tmp_path):
    """The whole site, as `mkdocs build --strict` builds it: a broken link, anchor or API reference fails."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's notice about MkDocs 2.0 is not a warning
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "site" / "reference" / "study-file" / "index.html").is_file()
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    assert "run_study" in api and "export_student_of" in api and "StudyResult" in api
