"""PPO's pieces against independent computations, and its refusals of bad input."""

import copy

import pytest
import torch

from alignbook.models import TINY, load_model, load_tokenizer
from alignbook.ppo import (
    PPOSettings,
    adaptive_kl_coef,
    gae,
    gae_loop,
    masked_whiten,
    per_token_rewards,
    train_ppo,
    truncate_after_eos,
)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_the_backward_loop(gamma, lam):
    g = torch.Generator().manual_seed(0)
    rewards, values = (
        torch.randn(5, 9, generator=g, dtype=torch.float64),
        torch.randn(5, 9, generator=g, dtype=torch.float64),
    )
    ends = torch.tensor([9, 4, 1, 7, 9])  # responses of different lengths: zero after the end
    alive = (torch.arange(9)[None] < ends[:, None]).double()
    rewards, values = rewards * alive, values * alive
    adv, ret = gae(rewards, values, gamma, lam)
    torch.testing.assert_close(adv, gae_loop(rewards, values, gamma, lam), rtol=0, atol=1e-12)
    torch.testing.assert_close(ret, adv + values)
    assert (adv * (1 - alive)).abs().max() == 0  # nothing leaks past the end of a response


def test_gae_closed_forms():
    g = torch.Generator().manual_seed(1)
    r, v = torch.randn(3, 6, generator=g, dtype=torch.float64), torch.randn(3, 6, generator=g, dtype=torch.float64)
    next_v = torch.cat([v[:, 1:], torch.zeros(3, 1, dtype=torch.float64)], 1)
    torch.testing.assert_close(gae(r, v, 0.9, 0.0)[0], r + 0.9 * next_v - v)  # λ = 0: the TD error
    mc = r.flip(-1).cumsum(-1).flip(-1)  # Σ_{s≥t} r_s
    torch.testing.assert_close(gae(r, v, 1.0, 1.0)[0], mc - v)  # γ = λ = 1: return - V


def test_score_placement():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])  # EOS at 1; cut off at 3
    kl = torch.ones(2, 4)
    r, vm = per_token_rewards(torch.tensor([5.0, 7.0]), kl, mask, 0.5)
    torch.testing.assert_close(r, torch.tensor([[-0.5, 4.5, 0, 0], [-0.5, -0.5, -0.5, 6.5]]))
    torch.testing.assert_close(vm, mask)
    r, vm = per_token_rewards(torch.tensor([5.0, 7.0]), kl, mask, 0.5, score_after_eos=True)  # TRL 1.9
    torch.testing.assert_close(r, torch.tensor([[-0.5, -0.5, 5.0, 0], [-0.5, -0.5, -0.5, 6.5]]))
    torch.testing.assert_close(vm, torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]))


def test_whiten_and_controller():
    x, mask = torch.tensor([[1.0, 2.0, 3.0, 99.0]]), torch.tensor([[1, 1, 1, 0]])
    torch.testing.assert_close(masked_whiten(x, mask), torch.tensor([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="at least 2"):
        masked_whiten(x, torch.tensor([[1, 0, 0, 0]]))
    assert adaptive_kl_coef(0.1, kl=10.0, target=5.0, n=1000, horizon=10_000) == pytest.approx(
        0.1 * (1 + 0.2 * 0.1)
    )  # clipped at +20 %
    assert adaptive_kl_coef(0.1, kl=4.5, target=5.0, n=1000, horizon=10_000) == pytest.approx(0.1 * (1 - 0.1 * 0.1))


def test_truncate_after_eos():
    out, mask, ended = truncate_after_eos(torch.tensor([[5, 2, 7, 8], [5, 6, 7, 8]]), eos_token_id=2, pad_token_id=0)
    assert out.tolist() == [[5, 2, 0, 0], [5, 6, 7, 8]] and mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert ended.tolist() == [True, False]


def _reward(texts, finished):
    return [len(t) / 10 for t in texts]


def test_bad_input_is_refused(tiny):
    policy, ref, tok = tiny
    cfg = PPOSettings(steps=1, prompts_per_step=2, max_new_tokens=4)
    eos_pad = load_tokenizer(TINY)  # pads with its EOS
    with pytest.raises(ValueError, match="pad token is the EOS"):
        train_ppo(policy, ["hi"], cfg, eos_pad, _reward, ref)
    two = load_model(TINY, kind="reward", device="cpu", num_labels=2, pad_token_id=0)
    with pytest.raises(ValueError, match="one output"):
        train_ppo(policy, ["hi"], cfg, tok, ref=ref, reward_model=two)
    with pytest.raises(ValueError, match="one output"):
        train_ppo(policy, ["hi"], cfg, tok, _reward, ref, value_model=two)
    with pytest.raises(ValueError, match="exactly one"):
        train_ppo(policy, ["hi"], cfg, tok, ref=ref)
    with pytest.raises(ValueError, match="is the policy"):
        train_ppo(policy, ["hi"], cfg, tok, _reward, policy)
    with pytest.raises(ValueError, match="all 1 prompts are longer"):
        train_ppo(
            policy, ["word " * 50], PPOSettings(steps=1, prompts_per_step=2, max_prompt_length=8), tok, _reward, ref
        )
    with pytest.raises(ValueError, match="split into"):
        PPOSettings(prompts_per_step=3, num_minibatches=2)
    with pytest.raises(ValueError, match="kl_estimator"):
        PPOSettings(kl_estimator="k2")


def test_long_prompts_are_counted_and_dropped(tiny):
    policy, ref, tok = tiny
    cfg = PPOSettings(steps=1, prompts_per_step=2, max_new_tokens=4, max_prompt_length=8)
    with pytest.warns(UserWarning, match="dropped 1 of 2 prompts longer than 8 tokens"):
        train_ppo(policy, ["hi", "word " * 50], cfg, tok, _reward, ref)


def test_no_update_after_a_nan_reward(tiny):
    policy, ref, tok = tiny
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    with pytest.raises(ValueError, match="non-finite"):
        train_ppo(
            policy,
            ["hi"],
            PPOSettings(steps=2, prompts_per_step=2, max_new_tokens=4),
            tok,
            lambda texts, finished: [float("nan")] * len(texts),
            ref,
        )
    assert all(torch.equal(p, before[n]) for n, p in policy.named_parameters())


def test_history_and_value_head(tiny):
    policy, ref, tok = tiny
    hist = train_ppo(
        policy,
        ["hi", "Name a color:"],
        PPOSettings(steps=2, prompts_per_step=2, max_new_tokens=4, lr=1e-3),
        tok,
        _reward,
        ref,
    )
    assert [h["step"] for h in hist] == [1, 2]
    assert (
        hist[0]["objective/kl"] == pytest.approx(0.0, abs=1e-5) and hist[1]["objective/kl"] != 0
    )  # π = π_ref at the start only
    assert all(h["val/ratio"] > 0 and h["completions/mean_length"] <= 4 for h in hist)
    assert all(0 <= h["policy/clipfrac_avg"] <= 1 for h in hist)


# ---------------------------------------------------------------- inputs train_ppo would misread


def test_ppo_applies_bf16(tiny):
    policy, ref, tok = tiny
    seen = []
    hook = policy.model.layers[0].register_forward_hook(lambda m, i, o: seen.append(torch.is_autocast_enabled("cpu")))
    histories = {}
    for bf16 in (False, True):
        seen.clear()
        model = copy.deepcopy(policy)
        cfg = PPOSettings(steps=2, prompts_per_step=2, max_new_tokens=4, lr=1e-3, bf16=bf16, shared_trunk=False)
        histories[bf16] = train_ppo(model, ["hi", "Name a color:"], cfg, tok, _reward, ref)
        assert seen and all(s == bf16 for s in seen), (bf16, seen[:5])  # every forward pass, and only under bf16
    hook.remove()
    assert histories[True][1]["loss"] != histories[False][1]["loss"]


def test_ppo_refuses_inputs_it_would_misread(tiny):
    policy, ref, tok = tiny
    cfg = PPOSettings(steps=1, prompts_per_step=2, max_new_tokens=4)
    with pytest.raises(TypeError, match="read character by character"):
        train_ppo(policy, "Tell me a joke", cfg, tok, _reward, ref)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        train_ppo(policy, ["hi", ""], cfg, tok, _reward, ref)
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        train_ppo(policy, ["", " "], cfg, tok, _reward, ref)
    frozen = copy.deepcopy(policy).requires_grad_(False)
    with pytest.raises(ValueError, match="the policy has no trainable parameters, so only the critic would learn"):
        train_ppo(frozen, ["hi"], cfg, tok, _reward, ref)
    no_pad = load_tokenizer(TINY)
    no_pad.pad_token = None
    with pytest.raises(ValueError, match="train_ppo: the tokenizer has no pad token"):
        train_ppo(policy, ["hi"], cfg, no_pad, _reward, ref)


@pytest.mark.parametrize(
    "rewards, says",
    [(["good", "bad"], "returned a str"), ([None, 1.0], "returned a NoneType"), (None, "got a NoneType")],
)
def test_rewards_that_are_not_numbers_are_refused(tiny, rewards, says):
    policy, ref, tok = tiny
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    cfg = PPOSettings(steps=1, prompts_per_step=2, max_new_tokens=4)
    with pytest.raises(TypeError, match=says):
        train_ppo(policy, ["hi"], cfg, tok, lambda texts, finished: rewards, ref)
    assert all(torch.equal(p, before[n]) for n, p in policy.named_parameters())
