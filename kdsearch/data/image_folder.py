"""``data.source = "image_folder"``: ``root/<class>/*.png|jpg|…``, or ``root/train|val|test/<class>/…``."""

from __future__ import annotations

import logging
from pathlib import Path

from ..config.spec import DataSpec
from ..errors import KdsearchError
from .image_files import SPLIT_FOLDERS, ImageList, load_image_list, sorted_class_names
from .images import IMAGE_EXTENSIONS
from .sources import SOURCES
from .store import RawDataset

log = logging.getLogger(__name__)


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder`` (recursively, sorted; hidden files left out)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


def class_folders(folder: Path) -> list[Path]:
    """The sub-folders of ``folder`` (hidden ones left out)."""
    return [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]


def list_image_folder(root: Path) -> ImageList:
    """The files of ``root/<class>/…`` or ``root/{train,val,test}/<class>/…`` with their labels.

    Class indices follow the sorted class-folder names (numerically when all are integers).
    """
    root = Path(root)
    if not root.is_dir():
        raise KdsearchError(f"image folder {root} not found; point data.root (--data-root) at the dataset folder")
    split_roots = {s: root / s for s in SPLIT_FOLDERS if (root / s).is_dir()}
    if split_roots and "train" not in split_roots:
        present = ", ".join(f"{s}/" for s in split_roots)
        raise KdsearchError(
            f"{root} has {present} but no train/ folder; add {root / 'train'} with one folder per class"
        )
    if not split_roots:
        split_roots = {"train": root}
    classes_per_split = {s: {p.name: p for p in class_folders(folder)} for s, folder in split_roots.items()}
    class_names = sorted_class_names(classes_per_split["train"])
    train_root = split_roots["train"]
    if not class_names:
        loose = len(image_files(train_root)) if train_root.is_dir() else 0
        why = f" ({loose} images lie outside class folders)" if loose else ""
        raise KdsearchError(
            f"{train_root} has no class folders{why}; expected {train_root}/<class>/<image>.png (or .jpg, .jpeg, .bmp, .webp)"
        )
    if len(class_names) < 2:
        raise KdsearchError(
            f"{train_root} has only one class folder ({class_names[0]}); a classifier needs at least two"
        )
    index = {name: i for i, name in enumerate(class_names)}
    files: dict[str, list[Path]] = {}
    labels: dict[str, list[int]] = {}
    for split, classes in classes_per_split.items():
        unknown = sorted(set(classes) - set(index))
        if unknown:
            raise KdsearchError(
                f"{split_roots[split]} has class folders not in {train_root}: {', '.join(unknown)}; "
                "every class needs training images (add them to train/ or remove the folders)"
            )
        files[split], labels[split] = [], []
        for name in sorted(classes, key=index.__getitem__):
            found = image_files(classes[name])
            if not found:
                raise KdsearchError(
                    f"class folder {classes[name]} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                    "add images or remove the folder"
                )
            files[split] += found
            labels[split] += [index[name]] * len(found)
    return ImageList(files, labels, class_names, root)


@SOURCES.register("image_folder")
def load_image_folder(spec: DataSpec, cache_dir: Path | None = None) -> RawDataset:
    """The class folders of ``data.root``, decoded (disk-cached) or streamed."""
    images = list_image_folder(Path(spec.root))
    for s, name in (("val", "val_size"), ("test", "test_size")):
        if s in images.files:
            log.info("data: using %s for the %s split (data.%s is not used)", Path(spec.root) / s, s, name)
    return load_image_list(spec, images, cache_dir)
