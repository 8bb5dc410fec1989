"""``data.source = "csv"``: an image folder plus a CSV giving each file's label and partition (MHIST layout)."""

from __future__ import annotations

import csv
from pathlib import Path

from ..config.spec import DataSpec
from ..errors import KdsearchError
from .image_files import ImageList, listing, load_image_list, sorted_class_names
from .sources import SOURCES
from .store import RawDataset


def _under(root: Path, path: Path) -> Path:
    return path if path.is_absolute() else root / path


def read_csv_index(
    csv_path: Path,
    image_dir: Path,
    *,
    file_column: str = "Image Name",
    label_column: str = "Majority Vote Label",
    partition_column: str = "Partition",
    train_value: str = "train",
    test_value: str = "test",
) -> ImageList:
    """Files and labels from a CSV (one row per image): a ``train`` and (with a partition column) a ``test`` split.

    Class indices follow the sorted label values. Every bad row (missing label, unknown partition,
    missing file) is reported at once, by line number.
    """
    if not csv_path.is_file():
        raise KdsearchError(f"CSV file {csv_path} not found; set data.csv_file (relative to data.root, or absolute)")
    if not image_dir.is_dir():
        raise KdsearchError(
            f"image folder {image_dir} not found; set data.image_dir (relative to data.root, or absolute)"
        )
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise KdsearchError(f"cannot read {csv_path} as CSV: {err}; save it as UTF-8 comma-separated text") from None
    columns = {"file_column": file_column, "label_column": label_column}
    if partition_column:
        columns["partition_column"] = partition_column
    for setting, column in columns.items():
        if column not in header:
            raise KdsearchError(
                f"{csv_path} has no column {column!r} (data.{setting}); its columns are "
                f"{', '.join(repr(h) for h in header) or 'none'}; set data.{setting} to one of them"
            )
    col = {setting: header.index(column) for setting, column in columns.items()}
    wanted = {train_value: "train", test_value: "test"}
    entries: dict[str, list[tuple[Path, str]]] = {"train": [], "test": []} if partition_column else {"train": []}
    problems: list[str] = []
    fixes: set[str] = set()
    for line, row in rows:
        if not any(cell.strip() for cell in row):
            continue  # blank line
        cells = [c.strip() for c in row] + [""] * (len(header) - len(row))
        name, label = cells[col["file_column"]], cells[col["label_column"]]
        if not name:
            problems.append(f"line {line}: empty {file_column!r}")
            fixes.add(f"fill in the {file_column!r} cells")
            continue
        if not label:
            problems.append(f"line {line} ({name}): no label in column {label_column!r}")
            fixes.add(f"fill in the missing {label_column!r} cells or delete those rows")
        split = "train"
        if partition_column:
            value = cells[col["partition_column"]]
            split = wanted.get(value, "")
            if not split:
                problems.append(
                    f"line {line} ({name}): {partition_column} {value!r} is neither {train_value!r} nor {test_value!r}"
                )
                fixes.add("fix those rows, or set data.train_value / data.test_value to the CSV's values")
        path = image_dir / name
        if not path.is_file():
            problems.append(f"line {line}: image {path} not found")
            fixes.add(f"put the images in {image_dir} or set data.image_dir to their folder")
        if split and label and path.is_file():
            entries[split].append((path, label))
    if problems:
        raise KdsearchError(
            f"{csv_path}: {len(problems)} bad row(s): {listing(problems)}. Fix: {'; '.join(sorted(fixes))}"
        )
    for split, items in entries.items():
        if not items and partition_column:
            value = train_value if split == "train" else test_value
            raise KdsearchError(
                f"{csv_path} has no rows with {partition_column} = {value!r}, so the {split} split is empty; "
                f'set data.{split}_value to the CSV\'s value, or partition_column = "" to carve a seeded test split'
            )
        if not items:
            raise KdsearchError(f"{csv_path} has no data rows; it needs one row per image")
    class_names = sorted_class_names({label for items in entries.values() for _, label in items})
    if len(class_names) < 2:
        raise KdsearchError(
            f"{csv_path}: column {label_column!r} holds one label ({class_names[0]!r}); a classifier needs at least two"
        )
    index = {name: i for i, name in enumerate(class_names)}
    return ImageList(
        {split: [p for p, _ in items] for split, items in entries.items()},
        {split: [index[lab] for _, lab in items] for split, items in entries.items()},
        class_names,
        image_dir,
    )


@SOURCES.register("csv")
def load_csv(spec: DataSpec, cache_dir: Path | None = None) -> RawDataset:
    """The CSV's images under ``data.root``, decoded (disk-cached) or streamed."""
    root = Path(spec.root)
    images = read_csv_index(
        _under(root, spec.csv_file),
        _under(root, spec.image_dir),
        file_column=spec.file_column,
        label_column=spec.label_column,
        partition_column=spec.partition_column,
        train_value=spec.train_value,
        test_value=spec.test_value,
    )
    return load_image_list(spec, images, cache_dir)
