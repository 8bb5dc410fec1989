"""Errors that cannot hide bugs: only the failures a step expects become a user's message."""

from __future__ import annotations

import numpy as np
import pytest

from kdsearch.data.images import fill_images
from kdsearch.errors import KdsearchError, first_line
from kdsearch.search import storage


def test_a_corrupt_image_is_reported_but_running_out_of_memory_is_not_a_bad_file():
    def work(i: int) -> np.ndarray:
        if i == 1:
            raise OSError("image file is truncated\n(2 bytes not processed)")
        return np.zeros((1, 4, 4), dtype=np.uint8)

    _, bad = fill_images(3, 1, 4, work, threads=False)
    assert bad == [(1, "OSError: image file is truncated")]

    def out_of_memory(i: int) -> np.ndarray:
        raise MemoryError()

    with pytest.raises(MemoryError):
        fill_images(2, 1, 4, out_of_memory, threads=False)


def test_a_bad_storage_url_is_one_line_but_a_bug_keeps_its_traceback(monkeypatch):
    with pytest.raises(KdsearchError, match="cannot open storage 'foo://bar'.*check the URL"):
        storage.open_storage("foo://bar")

    def bug(*args, **kwargs):
        raise TypeError("a bug in kdsearch, not in the URL")

    monkeypatch.setattr(storage, "_new_rdb_storage", bug)
    with pytest.raises(TypeError, match="a bug in kdsearch"):
        storage.open_storage("sqlite:///:memory:")


def test_first_line():
    assert first_line(ValueError("one\ntwo")) == "one"
    assert first_line(ValueError("")) == "ValueError"
