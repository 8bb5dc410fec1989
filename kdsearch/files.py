"""Files a user keeps (report, exported students, the final comparison's JSON) written whole or not at all.

Each is written under a temporary name beside its final one, optionally checked, given the permissions a
plain ``open()`` would (``0o666`` less the umask: some writers, e.g. safetensors, create 0600 files), and
renamed: a Ctrl-C or a crash leaves the old file or the new one, never half of one. Standard library only.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomically(path: Path, write: Callable[[str], None], check: Callable[[str], None] | None = None) -> None:
    """``write(tmp)``, ``check(tmp)``, then rename ``tmp`` to ``path`` with the usual permissions: ``path`` is never
    half a file or an unchecked one; on any failure the temporary file is removed and the error propagates."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"))
    try:
        write(tmp)
        if check is not None:
            check(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomically(path: Path, text: str) -> None:
    """``path.write_text(text)`` (UTF-8), whole or not at all (``write_atomically``)."""
    write_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
