"""A trained student → files a user can ship: ``student.safetensors`` (the weights, loaded without pickle),
``student.torchscript.pt``, ``student.onnx`` (dynamic batch axis, input ``input``, output ``logits``) and
``card.json`` (the caller's card plus what the export knows: files and sizes, parameter count, checks, how to
load each file).

The model is copied to the CPU in eval mode and contiguous memory format; the caller's model is not changed.
Forward pre-hooks (such as kdsearch's 1-channel → 3-channel repeat for torchvision models) run inside
``__call__``, so tracing records them: the TorchScript and ONNX files take the input the model takes.

Each file is written under a temporary name, checked, then renamed: a file under its final name is complete
and, for TorchScript and ONNX, gives PyTorch's logits within ``TOLERANCE`` on the check images (run in chunks
of up to ``CHECK_BATCH`` and once on a single image, batch sizes other than the two traced images, so the
dynamic batch axis is exercised). The safetensors file is written first; a TorchScript or ONNX failure (an op
without an ONNX mapping, a check that fails) removes that format's stale file, is recorded in the card
(``files[kind]`` null, ``errors[kind]`` the reason), the other files are still written, and then a
``KdsearchError`` names what failed and what was written.

Example::

    exported = export_student(model, Path("out/student"), sample=x_test[:2], card={"architecture": "bn_cnn"},
                              check_inputs=x_test[:16])
    onnx_logits(exported.files["onnx"], x_test[:5])
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import KdsearchError, first_line
from ..files import write_atomically

ONNX_OPSET = 18
TOLERANCE = 1e-4  # max |logit difference| accepted between an exported file and PyTorch (fp32)
CHECK_BATCH = 64  # check images run at once
FILE_NAMES = {
    "safetensors": "student.safetensors",
    "torchscript": "student.torchscript.pt",
    "onnx": "student.onnx",
    "card": "card.json",
}


@dataclass
class ExportedStudent:
    """The files written for one student, the checks' results and the card as written."""

    folder: Path
    files: dict[str, Path]  # "safetensors", "torchscript", "onnx", "card": only the files written
    onnx_max_abs_diff: float  # nan when the ONNX file was not written
    card: dict[str, Any] = field(default_factory=dict)
    torchscript_max_abs_diff: float = float("nan")
    errors: dict[str, str] = field(default_factory=dict)  # format → why it was not written (empty when all were)


# --- files ---


def _cpu_state(model: nn.Module) -> dict[str, Tensor]:
    """The state_dict (parameters and buffers) on the CPU, each tensor contiguous and owning its memory
    (safetensors refuses tensors that share storage, e.g. tied weights)."""
    return {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()}


def save_safetensors(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``model``'s state_dict (parameters and buffers) to ``path`` as safetensors; loading it needs no pickle."""
    from safetensors.torch import save_file

    state = _cpu_state(model)
    meta = {"format": "pt", **{str(k): str(v) for k, v in (metadata or {}).items()}}
    write_atomically(Path(path), lambda tmp: save_file(state, tmp, metadata=meta))
    return Path(path)


def load_safetensors_into(model: nn.Module, path: Path) -> nn.Module:
    """Load the safetensors file at ``path`` into ``model`` strictly (every key and shape must match); returns it."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as err:  # noqa: BLE001 - missing, truncated or not a safetensors file
        raise KdsearchError(f"cannot read {path} as safetensors ({first_line(err)})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise KdsearchError(
            f"{path} does not fit this model ({first_line(err)}); build the architecture named in card.json"
        ) from None
    return model


def onnx_logits(path: Path, x: Tensor) -> Tensor:
    """Run the ONNX file at ``path`` on ``x`` (N×C×H×W, as float32 on the CPU) with onnxruntime; the logits."""
    return _onnx_runner(str(path))(x)


def _onnx_runner(path: str) -> Callable[[Tensor], Tensor]:
    """A function running the ONNX file at ``path`` with onnxruntime's CPU provider, in chunks."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: Tensor) -> Tensor:
        x = x.detach().float().cpu().contiguous()
        return torch.cat(
            [torch.from_numpy(np.asarray(session.run(None, {name: c.numpy()})[0])) for c in x.split(CHECK_BATCH)]
        )

    return run


# --- exporters ---


class _ExportFailed(Exception):
    """A format could not be written; the message is the reason for the card and the error."""


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence warnings and the process's stdout (file descriptor 1): the TorchScript-based ONNX exporter
    prints the whole graph from C++ when it fails, which Python cannot redirect otherwise."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no stdout to silence
        saved = -1
    try:
        if saved >= 0:
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if saved >= 0:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def _cause(err: BaseException) -> str:
    """``Type: first line`` of the innermost cause of ``err`` (the dynamo exporter wraps the real one), no colours."""
    while err.__cause__ is not None:
        err = err.__cause__
    return re.sub(r"\x1b\[[0-9;]*m", "", f"{type(err).__name__}: {first_line(err)}")


def _save_torchscript(model: nn.Module, batch: Tensor, tmp: str) -> None:
    """Trace ``model`` on ``batch`` and save it; tracing records what runs, hooks included, for any batch size."""
    with warnings.catch_warnings():  # TorchScript is deprecated upstream; traced files still serve C++/mobile users
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, (batch,), check_trace=False), tmp)


def _load_torchscript(path: str) -> Callable[[Tensor], Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(path, map_location="cpu")


def _save_onnx(model: nn.Module, batch: Tensor, tmp: str) -> str:
    """Export ``model`` to ONNX at ``tmp`` as one self-contained file with a dynamic batch axis; the exporter used.

    The TorchScript-based exporter (``dynamo=False``) goes first: on torch 2.14 it exports mobilenet_v2 and
    resnet18 in 1–3 s on a CPU where the dynamo exporter takes 5–15 s, it records the same trace as the
    TorchScript file, it writes one file with ``dynamic_axes``, and its errors name the op that has no ONNX
    mapping. The dynamo exporter (``external_data=False``: weights inside the file, no ``.onnx.data``) is the
    fallback, for models that exporter handles and for torch versions without the TorchScript one. When
    both fail, the reason names the first exporter's error, then the dynamo exporter's.
    """
    names = {"input_names": ["input"], "output_names": ["logits"], "opset_version": ONNX_OPSET, "verbose": False}
    try:
        with _quiet():
            torch.onnx.export(
                model,
                (batch,),
                tmp,
                dynamo=False,
                **names,
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
        return "torchscript"
    except Exception as err:  # noqa: BLE001 - try the other exporter before giving up
        first = err
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (batch,),
                tmp,
                dynamo=True,
                external_data=False,
                **names,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
            )
    except Exception as err:  # noqa: BLE001
        raise _ExportFailed(f"{_cause(first)}; the dynamo exporter failed too: {_cause(err)}") from None
    return "dynamo"


def write_onnx(model: nn.Module, batch: Tensor, path: Path) -> str:
    """``model`` (eval mode, on the CPU) as one ONNX file at ``path`` with a dynamic batch axis; the exporter
    used. A ``KdsearchError`` with the exporters' reasons when it cannot be exported."""
    try:
        return _save_onnx(model, batch, str(path))
    except _ExportFailed as err:
        raise KdsearchError(str(err)) from None


# --- checks ---


def _max_abs_diff(got: Tensor, want: Tensor) -> float:
    """Largest |got − want| (positions where both are equal or both NaN count 0; a NaN against a number is inf)."""
    if got.shape != want.shape:
        raise _ExportFailed(f"gives logits of shape {tuple(got.shape)}, PyTorch {tuple(want.shape)}")
    got, want = got.float(), want.float()
    same = (got == want) | (got.isnan() & want.isnan())
    diff = torch.where(same, 0.0, (got - want).abs().nan_to_num(nan=float("inf")))
    return float(diff.max()) if diff.numel() else 0.0


def _checked(
    run_file: Callable[[str], Callable[[Tensor], Tensor]],
    images: list[Tensor],
    reference: list[Tensor],
    diffs: dict[str, float],
    kind: str,
) -> Callable[[str], None]:
    """A check for ``_write_atomic``: the file's logits on each batch of ``images`` match ``reference`` within
    ``TOLERANCE``; the max |Δ| is stored in ``diffs[kind]``."""

    def check(tmp: str) -> None:
        run = run_file(tmp)
        with torch.no_grad():
            diff = max(_max_abs_diff(run(x), want) for x, want in zip(images, reference))
        diffs[kind] = diff
        if not diff <= TOLERANCE:
            raise _ExportFailed(
                f"its logits differ from PyTorch's by up to {diff:.2e} (> {TOLERANCE:g}) on the check images"
            )

    return check


def _pytorch_logits(model: nn.Module, x: Tensor) -> Tensor:
    """The model's logits for ``x`` (in chunks); a KdsearchError when it cannot take ``x``."""
    outs = []
    try:
        with torch.no_grad():
            for chunk in x.split(CHECK_BATCH):
                out = model(chunk)
                if not isinstance(out, Tensor):
                    raise TypeError(f"it returns {type(out).__name__}, not a logits tensor")
                outs.append(out.float())
    except Exception as err:  # noqa: BLE001 - a wrong input shape, a model error: the user's to fix
        raise KdsearchError(
            f"export: the student fails on the input of shape {tuple(x.shape)} ({_cause(err)}); pass images "
            "shaped and normalized as in training"
        ) from None
    return torch.cat(outs)


# --- the card ---


def _load_hints(architecture: str) -> dict[str, str]:
    """How to load each file, for the card."""
    fresh = (
        f"model = <a fresh {architecture or 'model'} instance> (kdsearch: kdsearch.nets.models.build_model("
        "architecture, num_classes, channels, image_size))"
    )
    if architecture.startswith("timm/"):
        fresh = (
            f"model = timm.create_model({architecture[5:]!r}, num_classes=num_classes, in_chans=channels, "
            "pretrained=False, **arch_args)"
        )
    elif architecture.startswith(("hf/", "hf-config/")):
        fresh = (
            "model = transformers.AutoModelForImageClassification.from_config(<its config, num_labels=num_classes>) "
            "(its outputs' .logits are the logits)"
        )
    return {
        "safetensors": f"{fresh}; model.load_state_dict(safetensors.torch.load_file('student.safetensors')); model.eval()",
        "torchscript": "model = torch.jit.load('student.torchscript.pt'); logits = model(x)",
        "onnx": (
            "session = onnxruntime.InferenceSession('student.onnx', providers=['CPUExecutionProvider']); "
            "logits = session.run(None, {'input': x})[0]"
        ),
        "input": "x: N×C×H×W float32, normalized with the card's input mean and std",
    }


def _card(
    given: dict[str, Any],
    model: nn.Module,
    files: dict[str, Path],
    errors: dict[str, str],
    diffs: dict[str, float],
    images: int,
    onnx_exporter: str | None,
) -> dict[str, Any]:
    """The caller's card plus the export's facts (these keys replace the caller's of the same name)."""

    def rounded(kind: str) -> float | None:
        return float(f"{diffs[kind]:.3e}") if kind in diffs and kind not in errors else None

    return {
        **given,
        "files": {
            kind: {"name": files[kind].name, "bytes": files[kind].stat().st_size} if kind not in errors else None
            for kind in ("safetensors", "torchscript", "onnx")
        },
        "errors": dict(errors),
        "parameters": sum(p.numel() for p in model.parameters()),
        "checks": {
            "images": images,
            "tolerance": TOLERANCE,
            "torchscript_max_abs_diff": rounded("torchscript"),
            "onnx_max_abs_diff": rounded("onnx"),
        },
        "onnx_opset": ONNX_OPSET,
        "onnx_exporter": onnx_exporter,
        "torch_version": torch.__version__,
        "load": _load_hints(str(given.get("architecture", ""))),
    }


# --- the export ---


def export_student(
    model: nn.Module,
    folder: Path,
    *,
    sample: Tensor,
    card: dict[str, Any],
    check_inputs: Tensor | None = None,
    strict: bool = True,
) -> ExportedStudent:
    """Write ``model`` into ``folder`` as safetensors, TorchScript and ONNX, each checked, plus ``card.json``.

    Args:
        model: the trained student (any device, mode and memory format; it is copied, not changed).
        folder: where the four files go (created if missing); files of the same names are replaced.
        sample: example input (N×C×H×W float32, normalized as the model expects); its first two images are
            traced (the one image twice when N is 1).
        card: JSON-able facts for ``card.json`` (architecture, classes, input, normalization, method, params,
            study, trial, seed, test scores...); the export adds ``files`` (name and bytes per format, null when
            not written), ``errors``, ``parameters``, ``checks`` (max |Δ| vs PyTorch), ``onnx_opset``,
            ``onnx_exporter`` (``torchscript`` or ``dynamo``), ``torch_version`` and ``load``.
        check_inputs: real images (N×C×H×W float32, normalized) the TorchScript and ONNX files must reproduce
            PyTorch's logits on within ``TOLERANCE``; default ``sample``. They run in chunks of up to
            ``CHECK_BATCH`` and once as a single image.
        strict: raise a ``KdsearchError`` when TorchScript or ONNX could not be written; with False, return
            and let ``ExportedStudent.errors`` say what is missing.

    Raises:
        KdsearchError: the model fails on ``sample`` or ``check_inputs`` (nothing written); or, with ``strict``,
            a format failed (the other files and the card are written).
    """
    folder = Path(folder)
    model = copy.deepcopy(model).cpu().eval().to(memory_format=torch.contiguous_format)
    sample = sample.detach().float().cpu().contiguous()
    if sample.dim() == 0 or len(sample) == 0:
        raise KdsearchError("export: the sample batch is empty; pass at least one input image")
    batch = sample[:2] if len(sample) >= 2 else sample.repeat(2, *([1] * (sample.dim() - 1)))
    check = sample if check_inputs is None else check_inputs.detach().float().cpu().contiguous()
    images = [check, check[:1]] if len(check) > 1 else [check]
    _pytorch_logits(model, batch)
    reference = [_pytorch_logits(model, x) for x in images]

    files = {kind: folder / name for kind, name in FILE_NAMES.items()}
    meta = {"architecture": card["architecture"]} if "architecture" in card else None
    save_safetensors(model, files["safetensors"], meta)
    errors: dict[str, str] = {}
    diffs: dict[str, float] = {}
    exporter: list[str] = []  # which ONNX exporter wrote the file
    steps = {
        "torchscript": (lambda tmp: _save_torchscript(model, batch, tmp), _load_torchscript),
        "onnx": (lambda tmp: exporter.append(_save_onnx(model, batch, tmp)), _onnx_runner),
    }
    for kind, (save, run_file) in steps.items():
        try:
            write_atomically(files[kind], save, _checked(run_file, images, reference, diffs, kind))
        except Exception as err:  # noqa: BLE001 - tracing and exporting a user's model fail in many ways
            errors[kind] = str(err) if isinstance(err, _ExportFailed) else _cause(err)
            files[kind].unlink(missing_ok=True)  # never leave an earlier export's file beside these weights

    full = _card(card, model, files, errors, diffs, len(check), None if "onnx" in errors else exporter[-1])
    text = json.dumps(full, indent=2, ensure_ascii=False, default=str) + "\n"
    write_atomically(files["card"], lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    written = {kind: path for kind, path in files.items() if kind not in errors}
    if errors and strict:
        failed = "; ".join(f"{FILE_NAMES[kind]} ({why})" for kind, why in errors.items())
        raise KdsearchError(
            f"export: could not write {failed}. Written in {folder}: {', '.join(p.name for p in written.values())} "
            "(card.json records the reason); load the weights from student.safetensors, or change the model"
        )
    nan = float("nan")
    return ExportedStudent(
        folder,
        written,
        nan if "onnx" in errors else diffs["onnx"],
        full,
        nan if "torchscript" in errors else diffs["torchscript"],
        errors,
    )
