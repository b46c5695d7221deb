"""Every logits transform equals transformers' processor (property tests); generate equals model.generate token for
token."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.generation.logits_process import (
    MinNewTokensLengthLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from alignbook.models import TINY, load_model, load_tokenizer
from alignbook.sampling import (
    GenerationSettings,
    apply_repetition_penalty,
    apply_temperature,
    generate,
    suppress_stop_tokens,
    top_k_filter,
    top_p_filter,
)

# logits with many ties (values drawn from a small set) and negative values, 1-3 rows, vocab 1-40
small_values = st.sampled_from([-3.0, -1.5, -1.0, 0.0, 0.5, 1.0, 1.0, 2.0, 2.5])
logits_st = (
    st.integers(1, 3)
    .flatmap(
        lambda b: st.integers(1, 40).flatmap(
            lambda v: st.lists(
                st.lists(st.one_of(small_values, st.floats(-20, 20, width=32)), min_size=v, max_size=v),
                min_size=b,
                max_size=b,
            )
        )
    )
    .map(lambda x: torch.tensor(x, dtype=torch.float32))
)


@settings(max_examples=200, deadline=None)
@given(logits_st, st.floats(1e-4, 10.0))
def test_temperature(z, t):
    assert torch.equal(apply_temperature(z, t), TemperatureLogitsWarper(t)(None, z))


@settings(max_examples=300, deadline=None)
@given(logits_st, st.integers(1, 60), st.integers(1, 3))
def test_top_k(z, k, keep):
    assert torch.equal(top_k_filter(z, k, keep), TopKLogitsWarper(k, min_tokens_to_keep=keep)(None, z))


@settings(max_examples=300, deadline=None)
@given(logits_st, st.floats(0.01, 0.999), st.integers(1, 3))
def test_top_p(z, p, keep):
    assert torch.equal(top_p_filter(z, p, keep), TopPLogitsWarper(p, min_tokens_to_keep=keep)(None, z))


def test_top_p_keeps_the_crossing_token():
    z = torch.log(torch.tensor([[0.4, 0.35, 0.25]]))
    assert top_p_filter(z, 0.5).isfinite().tolist() == [[True, True, False]]  # 0.4 < 0.5, 0.4 + 0.35 crosses
    assert torch.equal(top_p_filter(z, 0.5), TopPLogitsWarper(0.5)(None, z))


@settings(max_examples=300, deadline=None)
@given(logits_st, st.floats(0.5, 3.0), st.data())
def test_repetition_penalty(z, penalty, data):
    b, v = z.shape
    n = data.draw(st.integers(1, 12))
    ids = torch.tensor(
        data.draw(st.lists(st.lists(st.integers(0, v - 1), min_size=n, max_size=n), min_size=b, max_size=b))
    )
    assert torch.equal(apply_repetition_penalty(z, ids, penalty), RepetitionPenaltyLogitsProcessor(penalty)(ids, z))
    pads = torch.tensor(data.draw(st.lists(st.integers(0, n - 1), min_size=b, max_size=b)))  # left padding per row
    mask = (torch.arange(n)[None] >= pads[:, None]).long()
    theirs = RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=pads)(ids, z)
    assert torch.equal(apply_repetition_penalty(z, ids, penalty, mask), theirs)


@settings(max_examples=100, deadline=None)
@given(logits_st, st.integers(0, 5), st.integers(0, 8), st.data())
def test_min_new_tokens(z, generated, minimum, data):
    v = z.shape[1]
    stops = data.draw(st.lists(st.integers(0, v - 1), min_size=1, max_size=3, unique=True))
    ids = torch.zeros(z.shape[0], 3 + generated, dtype=torch.long)
    assert torch.equal(
        suppress_stop_tokens(z, stops, generated, minimum), MinNewTokensLengthLogitsProcessor(3, minimum, stops)(ids, z)
    )


@pytest.mark.parametrize(
    "bad",
    [
        dict(temperature=0.0),
        dict(temperature=-1.0),
        dict(top_p=0.0),
        dict(top_p=1.01),
        dict(top_k=-1),
        dict(min_new_tokens=5, max_new_tokens=4),
        dict(max_new_tokens=0),
        dict(repetition_penalty=0.0),
        dict(num_beams=2, do_sample=True),
        dict(early_stopping="soon"),
    ],
)
def test_bad_settings_are_value_errors(bad):
    with pytest.raises(ValueError):
        GenerationSettings(**bad)


# ---- end to end, on the tiny model: many settings, token-identical to model.generate ----
@pytest.fixture(scope="module")
def tiny_batch():
    model, tok = load_model(TINY, device="cpu"), load_tokenizer(TINY, padding_side="left")
    batch = tok(
        ["Hello there, how are", "A", "The quick brown fox jumps over the lazy"], return_tensors="pt", padding=True
    )
    return model, batch


@pytest.mark.parametrize(
    "knobs",
    [
        dict(),
        dict(repetition_penalty=1.5),
        dict(min_new_tokens=5, max_new_tokens=7),
        dict(eos_token_id=[2, 17, 300]),
        dict(do_sample=True),
        dict(do_sample=True, temperature=0.01),
        dict(do_sample=True, temperature=2.5, top_k=5),
        dict(do_sample=True, top_p=0.3, repetition_penalty=1.3),
        dict(do_sample=True, top_k=1),
        dict(do_sample=True, top_k=100_000, top_p=0.95, num_return_sequences=3),
    ],
)
def test_generate_equals_transformers(tiny_batch, knobs):
    model, batch = tiny_batch
    knobs = {"max_new_tokens": 12, **knobs}
    for seed in range(3):
        torch.manual_seed(seed)
        ours = generate(model, **batch, **knobs)
        torch.manual_seed(seed)
        theirs = model.generate(**batch, **{"do_sample": False, **knobs})
        assert torch.equal(ours, theirs), knobs


@pytest.mark.parametrize(
    "knobs",
    [
        dict(num_beams=2),
        dict(num_beams=4, num_return_sequences=4),
        dict(num_beams=3, length_penalty=0.0),
        dict(num_beams=3, length_penalty=-1.0, early_stopping=True),
        dict(num_beams=5, length_penalty=2.0, early_stopping="never"),
        dict(num_beams=3, repetition_penalty=1.4, min_new_tokens=4),
        dict(num_beams=4, eos_token_id=[2, 5, 9, 11, 300]),
    ],
)
def test_beam_search_equals_transformers(tiny_batch, knobs):
    model, batch = tiny_batch
    for n in (6, 15):
        ours = generate(model, **batch, max_new_tokens=n, **knobs)
        theirs = model.generate(**batch, max_new_tokens=n, do_sample=False, **knobs)
        assert torch.equal(ours, theirs), (n, knobs)


def test_right_padded_prompts_are_refused(tiny_batch):
    model, _ = tiny_batch
    ids, mask = torch.tensor([[5, 6, 2]]), torch.tensor([[1, 1, 0]])
    with pytest.raises(ValueError, match="left-padded"):
        generate(model, ids, mask)


def test_model_generation_config_defaults_apply_as_in_transformers():
    "A chat model's generation_config (say temperature 0.6, top_p 0.8) is used by both when the caller does not set it."
    model, tok = load_model(TINY, device="cpu"), load_tokenizer(TINY, padding_side="left")
    model.generation_config.temperature, model.generation_config.top_p, model.generation_config.top_k = 0.6, 0.8, 7
    batch = tok(["Hello there", "Hi"], return_tensors="pt", padding=True)
    torch.manual_seed(0)
    ours = generate(model, **batch, do_sample=True, max_new_tokens=10)
    torch.manual_seed(0)
    theirs = model.generate(**batch, do_sample=True, max_new_tokens=10)
    assert torch.equal(ours, theirs)
    torch.manual_seed(0)
    ours = generate(model, **batch, do_sample=True, max_new_tokens=10, top_k=0, temperature=1.5)
    torch.manual_seed(0)
    theirs = model.generate(**batch, do_sample=True, max_new_tokens=10, top_k=0, temperature=1.5)
    assert torch.equal(ours, theirs)


def test_generate_streams_like_transformers():
    "A transformers TextStreamer gets the same text from our generate as from model.generate (greedy, one prompt)."
    import io

    from transformers import TextStreamer

    class Collect(TextStreamer):
        def __init__(self, tok):
            super().__init__(tok, skip_prompt=True, skip_special_tokens=True)
            self.text = io.StringIO()

        def on_finalized_text(self, text, stream_end=False):
            self.text.write(text)

    tok = load_tokenizer(TINY)
    model = load_model(TINY, device="cpu")
    enc = tok(["The capital of France is"], return_tensors="pt")
    ours, theirs = Collect(tok), Collect(tok)
    ids = generate(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=12, do_sample=False, streamer=ours)
    model.generate(**enc, max_new_tokens=12, do_sample=False, streamer=theirs, pad_token_id=tok.pad_token_id)
    assert (
        ours.text.getvalue()
        == theirs.text.getvalue()
        == tok.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    )
    assert len(ours.text.getvalue()) > 10
    with pytest.raises(ValueError, match="a streamer shows one sequence"):
        generate(
            model,
            enc["input_ids"],
            enc["attention_mask"],
            max_new_tokens=2,
            num_return_sequences=2,
            do_sample=True,
            streamer=Collect(tok),
        )
