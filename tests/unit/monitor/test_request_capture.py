"""What the dataplane notes for the request log: counts always, inputs and outputs only when sampled."""

from __future__ import annotations

import numpy as np

from kiln.monitor.capture import Capture, close_capture, current_capture, note_inference, open_capture


def test_without_an_open_capture_nothing_happens() -> None:
    assert current_capture() is None
    note_inference("m", ["a"], [3], np.zeros((1, 4), np.float32))  # no error, nothing kept
    assert current_capture() is None


def test_an_unsampled_capture_keeps_counts_only() -> None:
    capture = Capture(sampled=False)
    token = open_capture(capture)
    try:
        note_inference("m", ["a b", "c"], [4, 3], np.zeros((2, 4), np.float32), version="2")
    finally:
        close_capture(token)
    assert current_capture() is None
    assert (capture.model, capture.version, capture.n_inputs, capture.n_tokens) == ("m", "2", 2, 7)
    assert capture.texts == [] and capture.embeddings == []


def test_a_sampled_capture_keeps_inputs_and_outputs() -> None:
    capture = Capture(sampled=True)
    token = open_capture(capture)
    try:
        note_inference("m", ["x"], [3], np.ones((1, 4), np.float32))
        note_inference("m", ["y", "z"], None, None, labels=["pos", "neg"], scores=[0.5, 0.7])
    finally:
        close_capture(token)
    assert capture.texts == ["x", "y", "z"]
    assert capture.tokens == [3, None, None]
    assert capture.labels == [None, "pos", "neg"] and capture.scores == [None, 0.5, 0.7]
    assert len(capture.embeddings) == 1 and capture.n_inputs == 3 and capture.n_tokens == 3
