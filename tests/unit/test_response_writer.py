"""model.py's response writer (Triton glue) with a stand-in for triton_python_backend_utils: one sequence's delta
per response, one response per sequence when not streamed, the FINAL flag once every sequence has ended."""

from __future__ import annotations

import sys
import types

import pytest

from core import Sampling, Update

FINAL = 1


@pytest.fixture(scope="module")
def model_module():
    fake = types.ModuleType("triton_python_backend_utils")
    fake.TRITONSERVER_RESPONSE_COMPLETE_FINAL = FINAL
    fake.Tensor = lambda name, array: (name, array)
    fake.TritonError = lambda message: message
    fake.InferenceResponse = lambda output_tensors=None, error=None: {
        "tensors": dict(output_tensors or []),
        "error": error,
    }
    saved = sys.modules.get("triton_python_backend_utils")
    sys.modules["triton_python_backend_utils"] = fake
    import model

    yield model
    sys.modules.pop("model", None)
    if saved is None:
        sys.modules.pop("triton_python_backend_utils")
    else:
        sys.modules["triton_python_backend_utils"] = saved


class Sender:
    def __init__(self):
        self.sent = []

    def send(self, response=None, flags=0):
        self.sent.append((response, flags))

    def texts(self):
        return [(r["tensors"]["text_output"].tolist()[0][0].decode(), f) for r, f in self.sent if r is not None]


def test_streamed_n_2_sends_each_sequences_deltas_and_final_after_both(model_module):
    sender, finished = Sender(), []
    sampling = Sampling(max_tokens=4, n=2, logprobs=True)
    writer = model_module._ResponseWriter(sender, True, "", sampling, finished.append)
    writer(Update("a", None, None, 2, 1, 0, (5,), (-0.5,)))
    writer(Update("b", None, None, 2, 1, 1, (6,), (-1.0,)))
    writer(Update("c", "stop", None, 2, 2, 0, (7,), (-0.25,)))
    assert not finished and all(f == 0 for _, f in sender.sent)
    writer(Update("", "length", None, 2, 2, 1))
    assert sender.texts() == [("a", 0), ("b", 0), ("c", 0), ("", FINAL)]
    first_of_0 = sender.sent[2][0]["tensors"]
    assert first_of_0["cum_log_probs"].tolist() == [[-0.75]] and first_of_0["sequence_index"].tolist() == [[0]]
    assert first_of_0["finish_reason"].tolist() == [[b"stop"]]
    assert [u.finish_reason for u in finished] == ["length"]  # the request counted once


def test_not_streamed_sends_one_response_per_sequence_with_the_prompt(model_module):
    sender = Sender()
    writer = model_module._ResponseWriter(sender, False, "Q:", Sampling(max_tokens=4, n=2), lambda u: None)
    writer(Update("x", None, None, 2, 1, 1, (1,)))
    writer(Update("y", None, None, 2, 1, 0, (2,)))
    writer(Update("z", "stop", None, 2, 2, 1, (3,)))
    writer(Update("w", "length", None, 2, 2, 0, (4,)))
    assert sender.texts() == [("Q:xz", 0), ("Q:yw", FINAL)]
    assert sender.sent[0][0]["tensors"]["output_ids"].tolist() == [[1, 3]]


def test_an_error_ends_the_request_at_once_and_cancelled_sends_only_the_flag(model_module):
    sender = Sender()
    writer = model_module._ResponseWriter(sender, True, "", Sampling(max_tokens=4, n=2), lambda u: None)
    writer(Update("", "error", "boom", 2, 0, 0))
    writer(Update("", "error", "boom", 2, 0, 1))
    assert sender.sent == [({"tensors": {}, "error": "boom"}, FINAL)]
    sender = Sender()
    writer = model_module._ResponseWriter(sender, True, "", Sampling(max_tokens=4, n=2), lambda u: None)
    writer(Update("", "cancelled", None, 2, 0, 0))
    writer(Update("", "cancelled", None, 2, 0, 1))
    assert sender.sent == [(None, FINAL)]
