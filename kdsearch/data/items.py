"""The ``(image, label)`` items of map-style datasets (python and torchvision sources): checked, hashed, converted.

An image is a PIL image (any mode ``convert("RGB"|"L")`` takes, RGBA and palette included), or a
C×H×W or H×W tensor or numpy array with 1 or 3 channels: uint8 (0-255), other integers in 0-255,
or floats in [0, 1], which are scaled by 255 and rounded to uint8. A label is an int, a numpy
integer or a 0-d integer tensor, >= 0. Every check fails with one line naming the item
(``"train item 17: ..."``) and what was found.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..errors import KdsearchError, first_line
from .images import conform_chw, pil_to_chw

GRAY_MODES = ("1", "L", "LA", "La", "I", "F")  # PIL modes with one colour channel (plus "I;16*")
EXPECTED_IMAGE = "expected a PIL image or a CHW/HW tensor or array"


def _a(word: str) -> str:
    return f"{'an' if word[:1].lower() in 'aeio' else 'a'} {word}"  # a uint8, an int64


def describe(obj: Any) -> str:
    """What ``obj`` is, for error messages: "a str", "a tuple of 3", "a float32 tensor of shape (3, 8)"."""
    if isinstance(obj, Tensor):
        return f"{_a(str(obj.dtype).removeprefix('torch.'))} tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, np.ndarray):
        return f"{_a(str(obj.dtype))} array of shape {obj.shape}"
    name = type(obj).__name__
    if isinstance(obj, (tuple, list, dict)):
        return f"{_a(name)} of {len(obj)}"
    if isinstance(obj, (bool, int, float, np.generic)):
        return f"{_a(name)} ({obj!r})"
    return _a(name)


def read_pair(dataset: Any, i: int, where: str) -> tuple[Any, Any]:
    """``dataset[i]`` as an (image, label) pair; one KdsearchError naming ``where`` when it is not one."""
    try:
        item = dataset[i]
    except Exception as err:  # noqa: BLE001 - the user's dataset may raise anything
        raise KdsearchError(f"{where}: reading it raised {type(err).__name__}: {first_line(err)}") from None
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise KdsearchError(f"{where} is {describe(item)}, expected an (image, label) pair")
    return item[0], item[1]


def pil_channels(img: Image.Image) -> int:
    """1 for the grayscale modes of PIL, 3 for the others (RGB, RGBA, P, CMYK, ...)."""
    return 1 if img.mode in GRAY_MODES or img.mode.startswith("I;16") else 3


def as_image(obj: Any, where: str) -> Image.Image | np.ndarray:
    """The item's image as it will be converted: a PIL image, or a uint8 C×H×W array (C = 1 or 3)."""
    if isinstance(obj, Image.Image):
        return obj
    if isinstance(obj, Tensor):
        obj = obj.detach().cpu()
        arr = (obj.float() if obj.dtype == torch.bfloat16 else obj).numpy()
    elif isinstance(obj, np.ndarray):
        arr = obj
    else:
        raise KdsearchError(f"{where}: image is {describe(obj)}, {EXPECTED_IMAGE}")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise KdsearchError(f"{where}: image is {describe(obj)}, {EXPECTED_IMAGE} (C×H×W or H×W)")
    if arr.shape[0] not in (1, 3):
        hint = ""
        if arr.shape[-1] in (1, 3, 4) and arr.shape[0] > 4:
            hint = "; is it H×W×C? move the channels first (array.transpose(2, 0, 1), tensor.permute(2, 0, 1))"
        raise KdsearchError(
            f"{where}: image is {describe(obj)}: {arr.shape[0]} channels, expected 1 (grayscale) or 3 (RGB){hint}"
        )
    return to_uint8(arr, where)


def to_uint8(arr: np.ndarray, where: str) -> np.ndarray:
    """uint8 as is, integers in 0-255 cast, floats in [0, 1] scaled by 255 and rounded; else a KdsearchError."""
    if arr.dtype == np.uint8:
        return arr
    kind = arr.dtype.kind
    if kind not in "iuf" or arr.size == 0:
        raise KdsearchError(f"{where}: image is {describe(arr)}; expected uint8 (0-255) or float (0-1) pixels")
    lo, hi = arr.min(), arr.max()
    if kind == "f":
        if not (np.isfinite(lo) and np.isfinite(hi) and lo >= 0 and hi <= 1):
            raise KdsearchError(
                f"{where}: float image values run from {lo:.4g} to {hi:.4g}, expected [0, 1] "
                "(divide 0-255 pixels by 255, or hand uint8; undo any normalization)"
            )
        return np.rint(arr.astype(np.float64) * 255).astype(np.uint8)
    if lo < 0 or hi > 255:
        raise KdsearchError(f"{where}: {arr.dtype} image values run from {lo} to {hi}, expected 0-255")
    return arr.astype(np.uint8)


def image_shape(image: Image.Image | np.ndarray) -> tuple[int, int, int]:
    """(channels, height, width) of what ``as_image`` returned."""
    if isinstance(image, Image.Image):
        return pil_channels(image), image.height, image.width
    c, h, w = image.shape
    return c, h, w


def as_label(obj: Any, where: str, num_classes: int | None) -> int:
    """The item's class number; a KdsearchError when it is not an integer >= 0 (and < ``num_classes``)."""
    value: int | None = None
    if isinstance(obj, (bool, np.bool_)):
        value = None
    elif isinstance(obj, (int, np.integer)):
        value = int(obj)
    elif isinstance(obj, Tensor) and obj.ndim == 0:
        integer = not (obj.dtype.is_floating_point or obj.dtype.is_complex or obj.dtype == torch.bool)
        value = int(obj.item()) if integer else None
    elif isinstance(obj, np.ndarray) and obj.ndim == 0:
        value = int(obj.item()) if obj.dtype.kind in "iu" else None
    if value is None:
        raise KdsearchError(
            f"{where}: label is {describe(obj)}, expected an integer class number (an int, a numpy integer or a 0-d tensor)"
        )
    if value < 0:
        raise KdsearchError(f"{where}: label {value} is negative; labels are class numbers 0, 1, …")
    if num_classes is not None and value >= num_classes:
        raise KdsearchError(
            f"{where}: label {value} is out of range for the {num_classes} class names (labels 0 to {num_classes - 1}); "
            "fix the label or the list of classes"
        )
    return value


def hash_image(h: Any, obj: Any) -> None:
    """Feed the image exactly as the dataset returned it (pixels, dtype, shape, mode) to the hash ``h``."""
    if isinstance(obj, Image.Image):
        h.update(f"pil:{obj.mode}:{obj.size}".encode())
        h.update(obj.tobytes())
        if obj.mode in ("P", "PA"):
            h.update(bytes(obj.getpalette() or []))
        return
    if isinstance(obj, Tensor):
        obj = obj.detach().cpu()
        obj = (obj.float() if obj.dtype == torch.bfloat16 else obj).numpy()
    arr = np.ascontiguousarray(obj)
    h.update(f"array:{arr.dtype.str}:{arr.shape}".encode())
    h.update(arr.data)


def conform_image(image: Image.Image | np.ndarray, size: int, channels: int) -> np.ndarray:
    """What ``as_image`` returned → uint8 ``channels``×``size``×``size``, with the same PIL steps as image files."""
    if isinstance(image, Image.Image):
        return pil_to_chw(image, size, channels)
    return conform_chw(image, size, channels)
