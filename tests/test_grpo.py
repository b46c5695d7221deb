"""`train_grpo`'s inputs: each bad one refused with a message that names it, before any weight changes; rows a
function skips are counted; TRL's prompt formats and reward-function arguments; pass@k against enumeration."""

import itertools
import math

import pytest
import torch

from alignbook.grpo import GRPOSettings, pass_at_k, train_grpo
from alignbook.lora import inject_lora
from alignbook.models import TINY, load_model, load_tokenizer

PROMPTS = ["Name a color:", "Name a fruit:"]


@pytest.fixture
def tok():
    t = load_tokenizer(TINY)
    t.pad_token = "<|endoftext|>"
    return t


def _policy():
    return inject_lora(load_model(TINY, device="cpu"), ["layers.1.self_attn.q_proj"], r=2, seed=0)


def _cfg(**kw):
    return GRPOSettings(**{**dict(steps=2, prompts_per_step=2, num_generations=2, max_new_tokens=4, lr=1e-2), **kw})


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _unchanged(policy, before):
    return all(torch.equal(p, before[n]) for n, p in policy.named_parameters() if p.requires_grad)


def _lengths(completions, **kw):
    return [len(c) / 10 for c in completions]


@pytest.mark.parametrize(
    "reward, error, words",
    [
        (lambda completions, **kw: [1.0] * (len(completions) - 1), ValueError, "returned 3 rewards for 4 answers"),
        (lambda completions, **kw: [float("nan")] * len(completions), ValueError, "returned nan for answer 0"),
        (lambda completions, **kw: ["1"] * len(completions), TypeError, "returned a str ('1') for answer 0"),
        (lambda completions, **kw: 1.0, TypeError, "returned a float: return a list"),
    ],
)
def test_bad_rewards_are_refused_before_any_update(tok, reward, error, words):
    policy = _policy()
    before = _weights(policy)
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")) as e:
        train_grpo(policy, PROMPTS, _cfg(), tok, reward)
    assert "step 1: reward function '<lambda>'" in str(e.value)
    assert _unchanged(policy, before)


@pytest.mark.parametrize(
    "kw, args, words",
    [
        (dict(num_generations=1), {}, "a group of one has no baseline"),
        (dict(beta=0.1), {}, "needs a reference model"),
        (dict(reward_weights=[1.0, 2.0]), {}, "2 weights for 1 reward functions"),
        ({}, dict(prompts=["Name a color:", [{"role": "user", "content": "hi"}]]), "some prompts are texts"),
        ({}, dict(prompts=[{"question": "no prompt column"}]), "prompt 0 is None"),
        ({}, dict(reward=None), "needs reward_fns"),
    ],
)
def test_bad_settings_and_inputs_are_refused(tok, kw, args, words):
    policy = _policy()
    before = _weights(policy)
    with pytest.raises(ValueError, match=words):
        train_grpo(policy, args.get("prompts", PROMPTS), _cfg(**kw), tok, args.get("reward", _lengths))
    assert _unchanged(policy, before)


def test_a_batch_that_is_not_whole_groups_is_refused(tok):
    def one_answer_short(model, input_ids, attention_mask, num_return_sequences, **kw):
        n = input_ids.shape[0] * num_return_sequences - 1
        return torch.cat([input_ids.repeat_interleave(num_return_sequences, 0)[:n], torch.full((n, 3), 300)], 1)

    with pytest.raises(ValueError, match="returned 3 answers for 2 prompts × 2: a batch must hold whole groups"):
        train_grpo(_policy(), PROMPTS, _cfg(), tok, _lengths, sample_fn=one_answer_short)


def test_a_pad_token_that_is_eos_is_refused():
    tok = load_tokenizer(TINY)
    tok.pad_token = tok.eos_token
    with pytest.raises(ValueError, match="pad token is the EOS token"):
        train_grpo(_policy(), PROMPTS, _cfg(), tok, _lengths)


def test_skipped_rows_are_counted_and_columns_reach_the_reward(tok):
    seen = {}

    def only_colors(prompts, completions, completion_ids, topic, **kw):
        seen.update(prompts=prompts, topic=topic, ids=completion_ids, completions=completions)
        return [1.0 if t == "color" else None for t in topic]

    rows = [
        {"prompt": [{"role": "user", "content": "Name a color."}], "topic": "color"},
        {"prompt": [{"role": "user", "content": "Name a fruit."}], "topic": "fruit"},
    ]
    history = train_grpo(_policy(), rows, _cfg(steps=1), tok, only_colors)
    assert sorted(seen["topic"]) == ["color", "color", "fruit", "fruit"]  # one value per answer
    assert all(isinstance(c, list) and c[0]["role"] == "assistant" for c in seen["completions"])  # conversational
    assert all(p[0]["content"] in ("Name a color.", "Name a fruit.") for p in seen["prompts"])
    assert all(isinstance(i, list) and 1 <= len(i) <= 4 for i in seen["ids"])
    assert history[0]["rewards/unscorable"] == 2  # the fruit group: no function applied
    assert history[0]["reward"] == 1.0  # the mean over the answers that were scored


def test_pass_at_k_equals_enumeration():
    for n, c in [(5, 0), (5, 2), (6, 5), (6, 6)]:
        right = [1] * c + [0] * (n - c)
        for k in range(1, n + 1):
            exact = sum(any(s) for s in itertools.combinations(right, k)) / math.comb(n, k)
            assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    with pytest.raises(ValueError, match="k must be in 1..5"):
        pass_at_k(5, 2, 6)
