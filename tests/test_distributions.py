"sequence_logprobs equals transformers' own cross-entropy, row by row, for any padding side and prompt length."

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from alignbook.distributions import entropy, pad_batch, sequence_logprobs, token_logprobs
from alignbook.models import TINY, load_model


@pytest.fixture(scope="module")
def tiny64():
    return load_model(TINY, device="cpu").double()


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6)), min_size=1, max_size=4),
    st.sampled_from(["left", "right"]),
    st.integers(0, 2**16),
)
def test_sequence_logprobs_equals_model_loss_per_row(tiny64, shapes, side, seed):
    g = torch.Generator().manual_seed(seed)
    rows = [
        dict(input_ids=torch.randint(3, 49152, (p + c,), generator=g).tolist(), completion_mask=[0] * p + [1] * c)
        for p, c in shapes
    ]
    b = pad_batch(rows, pad_token_id=2, side=side)
    with torch.no_grad():
        per_token, total = sequence_logprobs(tiny64, b["input_ids"], b["attention_mask"], b["completion_mask"])
        for i, r in enumerate(rows):  # each row alone, unpadded, through the model's own loss (mean over completion)
            ids = torch.tensor([r["input_ids"]])
            labels = ids.masked_fill(torch.tensor([r["completion_mask"]]) == 0, -100)
            loss = tiny64(input_ids=ids, labels=labels).loss  # transformers computes it in float32
            n = sum(r["completion_mask"])
            assert abs(-total[i].item() / n - loss.item()) < 1e-5
    assert per_token.shape == (len(rows), b["input_ids"].shape[1] - 1)
    assert (per_token[b["completion_mask"][:, 1:] == 0] == 0).all()  # prompt and padding contribute nothing


def test_token_logprobs_is_shifted_log_softmax():
    logits, ids = torch.randn(3, 7, 50, dtype=torch.float64), torch.randint(0, 50, (3, 7))
    expected = -F.cross_entropy(logits[:, :-1].reshape(-1, 50), ids[:, 1:].reshape(-1), reduction="none").view(3, 6)
    torch.testing.assert_close(token_logprobs(logits, ids), expected, rtol=0, atol=1e-12)


def test_entropy_bounds():
    z = torch.randn(100, 1000)
    h = entropy(z)
    assert (h >= 0).all() and (h <= torch.log(torch.tensor(1000.0)) + 1e-5).all()


def test_pad_batch_rejects_bad_side():
    with pytest.raises(ValueError, match="side must be"):
        pad_batch([dict(input_ids=[1])], 0, side="middle")
