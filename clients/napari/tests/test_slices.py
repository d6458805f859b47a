"""SliceBook: what changed since the last send (no Qt, no engine)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dilseg._slices import SliceBook


def test_changes_along_the_axis():
    labels = np.zeros((4, 5, 6), dtype=np.uint8)
    book = SliceBook(labels.shape, axis=2)
    assert not book.changes(labels)
    labels[1:3, 1:4, 2] = 1
    labels[0, 0, 4] = 7  # any label value is object
    ch = book.changes(labels)
    assert sorted(ch.annotate) == [2, 4] and ch.erase == []
    assert ch.annotate[2].shape == (4, 5) and ch.annotate[2].sum() == 6 and ch.annotate[4].sum() == 1
    book.mark_sent(ch)
    assert book.sent == [2, 4] and not book.changes(labels)

    labels[:, :, 4] = 0  # wiped: erased on the engine
    labels[3, 4, 2] = 1  # repainted: sent again
    book.mark_empty(0)  # marked empty: sent as zeros
    ch = book.changes(labels)
    assert sorted(ch.annotate) == [0, 2] and ch.erase == [4] and not ch.annotate[0].any()
    assert ch.describe() == "drawn 2; empty 0; erased 4"
    book.mark_sent(ch)
    assert book.sent == [0, 2] and not book.changes(labels)

    book.unmark_empty(0)  # no longer marked and never painted: erased
    assert book.changes(labels).erase == [0]


def test_sent_copies_are_independent_of_the_layer():
    labels = np.zeros((3, 4, 4), dtype=np.uint8)
    labels[1, 1, 1] = 1
    book = SliceBook(labels.shape, axis=0)
    book.mark_sent(book.changes(labels))
    labels[1, 2, 2] = 1  # painting after the send changes the layer, not the sent copy
    assert sorted(book.changes(labels).annotate) == [1]


def test_bad_input():
    with pytest.raises(ValueError):
        SliceBook((3, 4), axis=0)
    book = SliceBook((3, 4, 5), axis=1)
    with pytest.raises(ValueError):
        book.changes(np.zeros((3, 4, 6)))
    with pytest.raises(ValueError):
        book.mark_empty(4)
