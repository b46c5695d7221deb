import copy

import pytest

from alignbook.data import data_dir
from alignbook.models import TINY, load_model, load_tokenizer


@pytest.fixture(scope="session")
def local_data():
    "The local data directory; tests that read real data are skipped only when there is none on this machine."
    d = data_dir()
    if d is None:
        pytest.skip("no local data directory (set ALIGNBOOK_DATA)")
    return d


@pytest.fixture
def tiny():
    "The tiny random policy, a frozen copy of it (the reference), and its tokenizer, padding with a non-EOS token."
    tok = load_tokenizer(TINY)
    tok.pad_token = "<|endoftext|>"
    policy = load_model(TINY, device="cpu")
    return policy, copy.deepcopy(policy).requires_grad_(False), tok
