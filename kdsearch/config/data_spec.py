"""``DataSpec``: where a study's images come from, how they are decoded and split (the ``[data]`` section)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .section import MAX_SEED, Section, is_import_path

DEFAULT_FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"


SOURCE_FIELDS: dict[str, tuple[str, ...]] = {  # DataSpec field: the sources that read it
    "train_limit": ("idx", "cifar10", "torchvision", "python", "hf"),
    "test_limit": ("idx", "cifar10", "torchvision", "python", "hf"),
    "download": ("idx", "cifar10", "torchvision"),
    "test_size": ("image_folder", "csv", "torchvision", "python", "hf"),
    "skip_unreadable": ("image_folder", "csv"),
    "stream": ("image_folder", "csv", "torchvision", "python", "hf"),
    "loader_workers": ("image_folder", "csv", "torchvision", "python", "hf"),
    "factory": ("python",),
    "dataset": ("torchvision",),
    "args": ("torchvision", "python"),
    "csv_file": ("csv",),
    "image_dir": ("csv",),
    "file_column": ("csv",),
    "label_column": ("csv", "hf"),
    "image_column": ("hf",),
    "split_names": ("hf",),
    "partition_column": ("csv",),
    "train_value": ("csv",),
    "test_value": ("csv",),
}


class DataSpec(Section):
    """Where the images come from, how they are decoded and how they are split.

    ``source`` picks the reader: ``idx`` (MNIST layout, the default Fashion-MNIST study),
    ``cifar10`` (the python-pickle batches), ``image_folder`` (``root/<class>/*.png|jpg|…``,
    optionally under ``root/train``, ``root/val``, ``root/test``) or ``csv`` (an image folder plus
    a CSV naming each file's label and partition, e.g. MHIST), ``torchvision`` (a class of
    ``torchvision.datasets`` named by ``dataset``, read from ``root``) or ``python`` (the datasets
    returned by the user's function ``factory = "package.module:function"``). Fields that only one source
    reads are errors with another source (unless left at their default).
    Sizes (``val_size``, ``test_size``) are a count (int >= 1) or a fraction (float in (0, 1)).
    ``image_folder``, ``csv``, ``torchvision`` and ``python`` data above ``memory_budget_mb`` streams through a
    DataLoader with ``loader_workers`` workers (``stream``); the teacher's outputs are still computed once per image.
    """

    source: Literal["idx", "cifar10", "image_folder", "csv", "torchvision", "python", "hf"] = Field(
        "idx",
        description="the reader: idx (MNIST-layout IDX files), cifar10 (the python-pickle batches), image_folder "
        "(root/<class>/ image files), csv (an image folder plus a CSV of labels and partitions), torchvision (a "
        "torchvision.datasets class, see dataset), python (the datasets of factory) or hf (a Hugging Face dataset on disk: "
        "a save_to_disk folder, or an image folder or parquet files load_dataset reads)",
    )
    root: Path = Field(
        Path(DEFAULT_FASHION_MNIST_ROOT), description="dataset folder (required for sources other than idx and python)"
    )
    val_size: int | float = Field(
        5000, description="images held out of the training split for validation: a count, or a fraction in (0, 1)"
    )
    test_size: int | float | None = Field(
        None,
        description="image_folder without root/test, csv without partition column: images held out for the "
        "test split, a count or a fraction in (0, 1) (default 0.1)",
    )
    labeled: int = Field(
        2000, ge=0, description="training images whose labels the student may use (0: all not unlabeled)"
    )
    unlabeled: int = Field(8000, ge=0, description="transfer images the student sees through the teacher only")
    train_limit: int = Field(
        0, ge=0, description="idx, cifar10, torchvision, python: use only the first N training images (0: all)"
    )
    test_limit: int = Field(
        0, ge=0, description="idx, cifar10, torchvision, python: use only the first N test images (0: all)"
    )
    split_seed: int = Field(
        0,
        ge=0,
        le=MAX_SEED,
        description="seed of the validation split (and of a carved test split) and of the draw of the labeled and "
        "unlabeled images",
    )
    image_size: int | None = Field(
        None,
        ge=4,
        le=2048,
        description="resize every image to this square size (default: native; 32 for image_folder, csv)",
    )
    channels: Literal[1, 3] | None = Field(
        None, description="1 (grayscale) or 3 (RGB) (default: native; 3 for image_folder, csv)"
    )
    mean: list[float] | None = Field(
        None, description="per-channel mean on the [0, 1] scale (default: training split's)"
    )
    std: list[float] | None = Field(None, description="per-channel std on the [0, 1] scale (default: training split's)")
    memory_budget_mb: int = Field(
        2048,
        ge=1,
        description="largest in-memory float32 size of all splits, in MiB; image_folder, csv, torchvision and "
        "python data above it streams (see stream), idx and cifar10 data above it is refused",
    )
    stream: Literal["auto", "always", "never"] = Field(
        "auto",
        description="image_folder, csv, torchvision, python: 'auto' streams images through a DataLoader when the splits "
        "exceed memory_budget_mb, 'always' streams whatever the size, 'never' refuses data above the budget",
    )
    loader_workers: int = Field(
        2,
        ge=0,
        le=64,
        description="image_folder, csv, torchvision, python: DataLoader worker processes decoding streamed images (0: in-process)",
    )
    skip_unreadable: bool = Field(False, description="image_folder, csv: skip corrupt images instead of stopping")
    download: bool | Literal["fashion_mnist", "mnist"] = Field(
        False,
        description="download with torchvision into root when it holds no files (needs internet): cifar10: true; "
        'idx: "fashion_mnist" (or true) or "mnist"',
    )
    csv_file: Path = Field(Path("annotations.csv"), description="csv: the CSV, relative to root (or absolute)")
    image_dir: Path = Field(Path("images"), description="csv: the image folder, relative to root (or absolute)")
    file_column: str = Field("Image Name", min_length=1, description="csv: column with the image file name")
    label_column: str = Field(
        "Majority Vote Label",
        min_length=1,
        description="csv: column with the class label; hf: the label column (default: guessed, label or labels)",
    )
    image_column: str | None = Field(
        None, min_length=1, description="hf: the image column (default: guessed, image or img)"
    )
    split_names: dict[str, str] = Field(
        {},
        description='hf: the dataset\'s split for train, val and test, e.g. { val = "validation" } (default: their '
        "usual names; missing val/test splits are carved from train)",
    )
    partition_column: str = Field(
        "Partition", description="csv: column with the split ('' : no column, carve test_size)"
    )
    train_value: str = Field("train", min_length=1, description="csv: partition value of training rows")
    test_value: str = Field("test", min_length=1, description="csv: partition value of test rows")
    factory: str | None = Field(
        None,
        description="python: 'package.module:function' returning the datasets: a dict with 'train' and optionally "
        "'val', 'test', 'classes', or a tuple (train, test); items are (image, label)",
    )
    dataset: str | None = Field(
        None, description="torchvision: a class of torchvision.datasets taking train= or split=, e.g. 'CIFAR100'"
    )
    args: dict[str, Any] = Field(
        {}, description="python, torchvision: extra keyword arguments for the factory or the dataset class"
    )

    @field_validator("val_size", "test_size")
    @classmethod
    def _count_or_fraction(cls, value: int | float | None) -> int | float | None:
        if value is None or isinstance(value, bool):
            if isinstance(value, bool):
                raise ValueError("give a count (integer >= 1) or a fraction in (0, 1)")
            return value
        if isinstance(value, int) and value < 1:
            raise ValueError(f"{value} is not a count >= 1; give a count >= 1 or a fraction in (0, 1)")
        if isinstance(value, float) and not 0.0 < value < 1.0:
            raise ValueError(f"{value} is not a fraction in (0, 1); give a fraction in (0, 1) or a count as an integer")
        return value

    @model_validator(mode="after")
    def _check_source_fields(self) -> "DataSpec":
        for name, sources in SOURCE_FIELDS.items():
            if self.source not in sources and getattr(self, name) != type(self).model_fields[name].default:
                users = " or ".join(repr(s) for s in sources)
                raise ValueError(
                    f"{name} is only read with source = {users} (source is {self.source!r}); remove it or change source"
                )
        if isinstance(self.download, str) and self.source != "idx":
            raise ValueError(
                f"download = {self.download!r} names an IDX dataset; with source = {self.source!r} use true"
            )
        if self.source == "torchvision" and not self.dataset:
            raise ValueError(
                'dataset: source = "torchvision" needs dataset, a class of torchvision.datasets, e.g. "CIFAR100"'
            )
        if self.factory is not None and not is_import_path(self.factory):
            raise ValueError(f"factory: {self.factory!r} is not an import path; write it as 'package.module:function'")
        if self.source not in ("idx", "python") and "root" not in self.model_fields_set:
            raise ValueError(
                f"root: source = {self.source!r} needs root, the dataset folder; set data.root or --data-root"
            )
        if self.source == "csv" and self.partition_column and self.test_size is not None:
            raise ValueError(
                f"test_size: the test split comes from the column {self.partition_column!r}; "
                'remove test_size, or set partition_column = "" to carve a seeded test split'
            )
        if self.source == "csv" and self.train_value == self.test_value:
            raise ValueError(f"train_value and test_value are both {self.train_value!r}; they must differ")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std: give both (per-channel, on the [0, 1] scale) or neither")
        if self.mean is not None and self.std is not None:
            if self.channels is None and self.source in ("python", "torchvision", "hf"):  # the items say: 1 or 3
                if len(self.mean) != len(self.std) or len(self.mean) not in (1, 3):
                    raise ValueError(
                        f"mean and std need one value per channel (1 or 3); got {len(self.mean)} and {len(self.std)}"
                    )
            else:
                n = self.resolved_channels()
                if len(self.mean) != n or len(self.std) != n:
                    raise ValueError(
                        f"mean and std need one value per channel ({n}); got {len(self.mean)} and {len(self.std)}"
                    )
            if not all(0.0 <= m <= 1.0 for m in self.mean) or not all(0.0 < s <= 1.0 for s in self.std):
                raise ValueError(
                    "mean must lie in [0, 1] and std in (0, 1]: they are on the [0, 1] pixel scale "
                    "(divide 0-255 values by 255)"
                )
        return self

    def resolved_channels(self) -> int:
        """Channels of the loaded images: ``channels``, else the source's own (idx 1, others 3)."""
        if self.channels is not None:
            return self.channels
        return 1 if self.source == "idx" else 3
