"""``data.source = "hf"``: a Hugging Face ``datasets`` dataset on disk, read as ``(image, label)`` items.

``data.root`` is a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, or a local
dataset ``datasets.load_dataset(root)`` reads (an ``imagefolder`` of ``<class>/`` folders, parquet files).
The image and label columns are ``data.image_column`` / ``data.label_column``, guessed when unset
(``image``/``img``, ``label``/``labels``); splits are mapped to train/val/test by ``data.split_names``, else
by their usual names (``validation``, ``valid``, ``dev`` for val). Missing val/test splits are carved from
train as for every source; the items then go through the same checks, content hash, decode cache and
streaming store as ``python`` (``datasets.load_datasets``). Never downloads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config.spec import DataSpec
from ..errors import KdsearchError, first_line
from .datasets import load_datasets
from .sources import SOURCES
from .store import RawDataset

IMAGE_COLUMNS = ("image", "img", "images", "pixel_values", "picture")
LABEL_COLUMNS = ("label", "labels", "fine_label", "class", "target", "y")
SPLIT_ALIASES = {
    "train": ("train", "training"),
    "val": ("val", "validation", "valid", "dev"),
    "test": ("test", "testing", "eval"),
}
CSV_LABEL_DEFAULT = "Majority Vote Label"  # data.label_column's default (csv's MHIST column): "not set" for hf


class ColumnItems:
    """A Hugging Face dataset seen as map-style ``(image, label)`` items (picklable for loader workers)."""

    def __init__(self, dataset: Any, image_column: str, label_column: str) -> None:
        self.dataset = dataset
        self.image_column = image_column
        self.label_column = label_column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        row = self.dataset[int(i)]
        return row[self.image_column], row[self.label_column]


def _require_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise KdsearchError(
            "data.source = \"hf\" needs the datasets package, which is not installed: pip install 'kdsearch[hf]'"
        ) from None
    return datasets


def read_hf(root: Path, cache_dir: Path | None) -> dict[str, Any]:
    """The splits of the dataset at ``root`` by their own names (``{"train": Dataset}`` for a single dataset)."""
    datasets = _require_datasets()
    if not root.exists():
        raise KdsearchError(
            f"data.root {root} not found; point it at a folder written by dataset.save_to_disk(folder), or a local "
            "image folder or parquet files"
        )
    datasets.utils.logging.set_verbosity_error()  # kdsearch says what it read in its own lines
    datasets.disable_progress_bars()
    saved = (root / "dataset_dict.json").is_file() or (root / "state.json").is_file()
    try:
        if saved:
            loaded = datasets.load_from_disk(str(root))
        else:
            cache = str(cache_dir / "hf-datasets") if cache_dir is not None else None
            loaded = datasets.load_dataset(str(root), cache_dir=cache)
    except Exception as err:  # noqa: BLE001 - datasets raises many types for folders it cannot read
        how = "load_from_disk" if saved else "load_dataset"
        raise KdsearchError(
            f"data.root {root}: datasets.{how} raised {type(err).__name__}: {first_line(err)}; give a save_to_disk "
            "folder, an image folder (root/<class>/*.png) or parquet files"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        return dict(loaded)
    return {"train": loaded}


def _column(features: dict, given: str | None, options: tuple[str, ...], what: str, field: str) -> str:
    names = list(features)
    if given is not None:
        if given not in features:
            raise KdsearchError(
                f"data.{field} {given!r} is not a column of the dataset; its columns: {', '.join(names)}"
            )
        return given
    found = [c for c in options if c in features]
    if len(found) != 1:
        raise KdsearchError(
            f'data.source = "hf": cannot tell the {what} column from {", ".join(names)}; set data.{field}'
        )
    return found[0]


def map_splits(names: list[str], given: dict[str, str]) -> dict[str, str]:
    """``{train/val/test: the dataset's split name}`` from ``data.split_names`` or the usual names."""
    out: dict[str, str] = {}
    for ours, theirs in given.items():
        if ours not in SPLIT_ALIASES:
            raise KdsearchError(f"data.split_names: {ours!r} is not train, val or test")
        if theirs not in names:
            raise KdsearchError(f"data.split_names: the dataset has no split {theirs!r}; it has {', '.join(names)}")
        out[ours] = theirs
    for ours, aliases in SPLIT_ALIASES.items():
        if ours not in out:
            match = next((n for n in names if n.lower() in aliases), None)
            if match is not None and match not in out.values():
                out[ours] = match
    if "train" not in out:
        raise KdsearchError(
            f'data.source = "hf": no training split among {", ".join(names)}; name it with data.split_names = '
            '{ train = "..." }'
        )
    return out


@SOURCES.register("hf")
def load_hf(spec: DataSpec, cache_dir: Path | None = None) -> RawDataset:
    """The splits of a Hugging Face dataset on disk (see the module docstring), as ``(image, label)`` items."""
    splits = read_hf(Path(spec.root).expanduser(), cache_dir)
    chosen = map_splits(list(splits), dict(spec.split_names))
    train = splits[chosen["train"]]
    features = dict(train.features)
    label_given = None if spec.label_column == CSV_LABEL_DEFAULT else spec.label_column
    image_col = _column(features, spec.image_column, IMAGE_COLUMNS, "image", "image_column")
    label_col = _column(features, label_given, LABEL_COLUMNS, "label", "label_column")
    names = getattr(features[label_col], "names", None)
    datasets = {ours: ColumnItems(splits[theirs], image_col, label_col) for ours, theirs in chosen.items()}
    origin = f"the Hugging Face dataset {spec.root}"
    return load_datasets(spec, datasets, [str(n) for n in names] if names else None, cache_dir, origin=origin)
