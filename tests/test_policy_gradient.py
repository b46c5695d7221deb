"""Score-function estimators against exact gradients; baselines; the clipped surrogate; bad rewards refused before
updating."""

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from alignbook.distributions import completion_mask_until_stop
from alignbook.lora import inject_lora
from alignbook.models import TINY, load_model, load_tokenizer
from alignbook.policy_gradient import (
    ReinforceSettings,
    categorical_score_estimate,
    check_rewards,
    clipped_surrogate,
    first_trainable_layer,
    gaussian_score_estimate,
    leave_one_out_baseline,
    policy_and_ref_logprobs,
    reinforce_loss,
    train_reinforce,
)


def test_categorical_estimate_is_unbiased():
    theta = torch.tensor([0.3, -0.2, 1.0, 0.0], dtype=torch.float64, requires_grad=True)
    f = torch.tensor([2.0, -1.0, 0.5, 4.0], dtype=torch.float64)
    (F.softmax(theta, -1) * f).sum().backward()
    g = torch.Generator().manual_seed(1)
    est = torch.stack([categorical_score_estimate(theta.detach(), f, 5, g) for _ in range(20000)])
    se = est.std(0) / math.sqrt(len(est))
    assert ((est.mean(0) - theta.grad).abs() < 4 * se).all()


def test_gaussian_estimate_converges_to_the_closed_form():
    mu = torch.tensor(-0.2, dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    (1 - torch.special.ndtr((0.5 - mu) / sigma)).backward()  # P(y > 0.5)
    est = gaussian_score_estimate(-0.2, 1.3, lambda y: (y > 0.5).double(), 2_000_000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(est, torch.stack([mu.grad, sigma.grad]), rtol=0, atol=3e-3)


def test_batch_mean_baseline_shrinks_the_gradient_by_one_minus_one_over_n_and_loo_does_not():
    theta = torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64)
    f = torch.tensor([1.0, 3.0, -2.0], dtype=torch.float64)
    p, n, g = F.softmax(theta, -1), 4, torch.Generator().manual_seed(0)
    exact = p * (f - (p * f).sum())  # ∇θ Σ p f for a softmax
    mean_b, loo = [], []
    for _ in range(40000):
        y = torch.multinomial(p, n, replacement=True, generator=g)
        r = f[y]
        s = F.one_hot(y, 3) - p
        mean_b.append(((r - r.mean())[:, None] * s).mean(0))
        loo.append(((r - leave_one_out_baseline(r))[:, None] * s).mean(0))
    mean_b, loo = torch.stack(mean_b), torch.stack(loo)
    se_m, se_l = mean_b.std(0) / 200, loo.std(0) / 200
    assert ((loo.mean(0) - exact).abs() < 4 * se_l).all()
    assert ((mean_b.mean(0) - (1 - 1 / n) * exact).abs() < 4 * se_m).all()


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-3, 3), st.floats(-3, 3), st.floats(-5, 5)), min_size=1, max_size=12),
    st.floats(0.05, 0.5),
)
def test_clipped_surrogate_matches_its_definition(rows, eps):
    new, old, adv = (torch.tensor(c, dtype=torch.float64) for c in zip(*rows))
    ratio = (new - old).exp()
    expected = -torch.minimum(ratio * adv, torch.clamp(ratio, 1 - eps, 1 + eps) * adv).mean()
    torch.testing.assert_close(clipped_surrogate(new, old, adv, eps), expected)


def test_clipped_surrogate_is_the_policy_gradient_at_ratio_one():
    logp = torch.randn(16, dtype=torch.float64, requires_grad=True)
    adv = torch.randn(16, dtype=torch.float64)
    (g1,) = torch.autograd.grad(clipped_surrogate(logp, logp.detach(), adv), logp)
    (g2,) = torch.autograd.grad(reinforce_loss(logp, adv), logp)
    torch.testing.assert_close(g1, g2)


def test_bad_rewards_are_refused_before_any_update():
    tok, policy, ref = load_tokenizer(TINY), load_model(TINY, device="cpu"), load_model(TINY, device="cpu")
    inject_lora(policy, ["q_proj"], r=2)
    before = {n: p.clone() for n, p in policy.named_parameters()}
    s = ReinforceSettings(steps=1, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=4)
    for bad, msg in [
        (lambda texts, done: [float("nan")] * len(texts), "non-finite"),
        (lambda texts, done: [1.0], "must return 4"),
    ]:
        with pytest.raises(ValueError, match=msg):
            train_reinforce(policy, ["Hello", "Hi there"], s, tok, bad, ref)
    assert all(torch.equal(p, before[n]) for n, p in policy.named_parameters())
    log = pd.DataFrame(
        train_reinforce(policy, ["Hello", "Hi there"], s, tok, lambda texts, done: [1.0] * len(texts), ref)
    )
    assert {"step", "loss", "learning_rate", "grad_norm", "reward", "kl", "completions/mean_length"} <= set(log.columns)
    assert log.reward.iloc[0] == 1.0 and log.step.tolist() == [1]


def test_response_mask_and_reward_checks():
    assert completion_mask_until_stop(torch.tensor([[2, 5], [7, 2]]), [2]).tolist() == [[1, 0], [1, 1]]
    with pytest.raises(ValueError, match="must return 3 numbers"):
        check_rewards([[1.0, 2.0, 3.0]], 3)
    with pytest.raises(ValueError, match="at least 2"):
        leave_one_out_baseline(torch.tensor([1.0]))


def _frozen(model):
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _policy(seed=0, targets=("layers.1.self_attn.q_proj", "layers.1.self_attn.v_proj")):
    torch.manual_seed(seed)
    policy = inject_lora(load_model(TINY, device="cpu"), list(targets), r=4)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)  # so that the policy differs from the reference
    return policy


def test_shared_trunk_equals_two_full_forward_passes():
    ref, policy = _frozen(load_model(TINY, device="cpu")), _policy()
    assert first_trainable_layer(policy, ref) == 1
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 5000, (3, 12), generator=g)
    attn = torch.ones_like(ids)
    attn[0, :4] = 0
    attn[2, 10:] = 0  # left padding, and a finished row
    comp = torch.zeros_like(ids)
    comp[:, 6:] = 1
    full, full_ref = policy_and_ref_logprobs(policy, ref, ids, attn, comp)
    fast, fast_ref = policy_and_ref_logprobs(policy, ref, ids, attn, comp, first_layer=1)
    torch.testing.assert_close(fast, full)
    torch.testing.assert_close(fast_ref, full_ref)
    assert (fast[2, 9:] == 0).all() and (fast[:, :5] == 0).all() and (full - full_ref).abs().max() > 1e-2
    params = [p for p in policy.parameters() if p.requires_grad]
    for a, b in zip(torch.autograd.grad(fast.sum(), params), torch.autograd.grad(full.sum(), params)):
        torch.testing.assert_close(a, b)


def test_shared_trunk_is_refused_where_it_would_change_the_answer():
    ref = _frozen(load_model(TINY, device="cpu"))
    assert (
        first_trainable_layer(_policy(), _frozen(load_model(TINY, device="cpu", seed=1))) is None
    )  # other reference weights
    embeddings = _policy()
    embeddings.model.embed_tokens.weight.requires_grad_(True)
    assert first_trainable_layer(embeddings, ref) is None  # a trainable trunk
    assert first_trainable_layer(_frozen(load_model(TINY, device="cpu")), ref) is None  # nothing trainable
    assert first_trainable_layer(torch.nn.Linear(2, 2), ref) is None  # no model.layers
    assert first_trainable_layer(_policy(targets=["layers.0.self_attn.q_proj"]), ref) == 0  # embeddings only


def test_train_reinforce_is_the_same_with_and_without_the_shared_trunk():
    tok, ref = load_tokenizer(TINY), _frozen(load_model(TINY, device="cpu"))
    reward = lambda texts, done: [len(t) / 10 for t in texts]
    out = {}
    for shared in (True, False):
        policy = _policy()
        s = ReinforceSettings(
            steps=3, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=6, lr=1e-2, shared_trunk=shared
        )
        log = train_reinforce(policy, ["Hello", "Hi there", "Name a color"], s, tok, reward, ref)
        out[shared] = pd.DataFrame(log).drop(columns=["tokens_per_second"]), policy
    (log_a, pol_a), (log_b, pol_b) = out[True], out[False]
    assert log_a.kl.abs().max() > 0
    pd_close = lambda a, b: torch.testing.assert_close(
        torch.tensor(a.values), torch.tensor(b.values), rtol=1e-4, atol=1e-5
    )
    pd_close(log_a, log_b)
    for (n, a), b in zip(pol_a.named_parameters(), pol_b.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=n)


def test_train_reinforce_gives_each_response_its_prompt_and_calls_back():
    tok, ref = load_tokenizer(TINY), _frozen(load_model(TINY, device="cpu"))
    prompts = ["Hello", "Hi there", "Name a color"]
    last = {p: tok(p)["input_ids"][-1] for p in prompts}
    assert len(set(last.values())) == 3  # each prompt's echo is its own

    def echo(model, input_ids, attention_mask, num_return_sequences, max_new_tokens, **kw):
        "Each response repeats the last token of its (left-padded) prompt: the text says which prompt it answers."
        ids = input_ids.repeat_interleave(num_return_sequences, 0)
        return torch.cat([ids, ids[:, -1:].repeat(1, max_new_tokens)], 1)

    seen = []

    def reward(texts, finished, prompts):
        seen.extend(zip(texts, prompts, strict=True))
        return [1.0] * len(texts)

    s = ReinforceSettings(steps=2, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=3, kl_coef=0.0)
    called = lambda step, policy, batch: {"called": step * 10, "responses": len(batch["texts"])} if step == 2 else None
    log = train_reinforce(_policy(), prompts, s, tok, reward, ref, sample_fn=echo, callback=called)
    assert len(seen) == 8  # 2 steps × 2 prompts × 2 responses
    for text, prompt in seen:
        assert text == tok.decode([last[prompt]] * 3), (text, prompt)
    assert "called" not in log[0] and log[1]["called"] == 20 and log[1]["responses"] == 4


def test_report_to_tensorboard_writes_each_row_with_what_the_callback_added(tmp_path):
    "Tracking for library users: every number of every row, the callback's too (it adds to a row once logged)."
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tok, ref = load_tokenizer(TINY), _frozen(load_model(TINY, device="cpu"))
    s = ReinforceSettings(
        steps=3,
        prompts_per_step=2,
        samples_per_prompt=2,
        max_new_tokens=3,
        report_to="tensorboard",
        logging_dir=str(tmp_path / "reinforce"),
    )
    called = lambda step, policy, batch: {"eval/score": step / 10}
    log = train_reinforce(_policy(), ["Hello", "Hi there"], s, tok, lambda t, f: [1.0] * len(t), ref, callback=called)
    events = EventAccumulator(str(tmp_path / "reinforce"))
    events.Reload()
    assert [e.value for e in events.Scalars("eval/score")] == pytest.approx([0.1, 0.2, 0.3])
    for name in ("loss", "kl", "reward"):
        assert [e.value for e in events.Scalars(name)] == pytest.approx([row[name] for row in log], rel=1e-6), name
    assert type(log) is list  # the rows alone: nothing of the tracker is returned
