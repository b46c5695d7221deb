"""PPO's pieces against independent computations, and its refusals of bad input."""

import copy

import pytest
import torch

from alignbook.models import TINY, load_model, load_tokenizer
from alignbook.ppo import (
    PPOSettings,
    adaptive_kl_coef,
    gae,
    masked_whiten,
    per_token_rewards,
    ppo_value_loss,
    train_ppo,
    truncate_after_eos,
)


def gae_loop(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    "The reference, kept here beside its test: TRL's backward recursion A_t = δ_t + γλ·A_{t+1}, one slot at a time."
    last_gae, advantages, width = torch.zeros(rewards.shape[0], dtype=rewards.dtype), [], rewards.shape[1]
    for t in reversed(range(width)):
        next_values = values[:, t + 1] if t < width - 1 else 0.0
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        last_gae = delta + gamma * lam * last_gae
        advantages.append(last_gae)
    return torch.stack(advantages[::-1], dim=1)


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

    def by_prompt(texts, finished, prompts):  # a reward the critic can predict from the prompt alone
        return [1.0 if p == "hi" else -1.0 for p in prompts]

    cfg = PPOSettings(steps=8, prompts_per_step=4, max_new_tokens=4, lr=1e-3, kl_coef=0.0, vf_coef=1.0, seed=0)
    hist = train_ppo(policy, ["hi", "Name a color:"], cfg, tok, by_prompt, ref)
    assert [h["step"] for h in hist] == list(range(1, 9))
    assert hist[0]["objective/kl"] == pytest.approx(0.0, abs=1e-5) and hist[1]["objective/kl"] != 0  # π = π_ref first
    assert all(h["completions/mean_length"] <= 4 for h in hist)
    # the value head learns the returns: explained variance from ≈ 0 (a fresh head) to ≈ 1, the value loss falls 100×
    ev = [h["val/explained_variance"] for h in hist]
    assert ev[0] < 0.2 and min(ev[3:]) > 0.9, ev
    assert hist[-1]["loss/value_avg"] < 0.01 * hist[0]["loss/value_avg"]


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


# ---------------------------------------------------------------- the clipped value loss and its clip fraction


def _old_clipped_value(values, old_values, clip):  # the form that rounded: V_old + clamp(V - V_old, ±ε)
    return old_values + (values - old_values).clamp(-clip, clip)


def test_value_clip_fraction_counts_only_real_clips():
    t = torch.tensor
    values, old_values, returns = t([0.0005], dtype=torch.float64), t([0.5], dtype=torch.float64), t([0.0]).double()
    mask = torch.ones(1)
    # ε = 1: |V - V_old| = 0.4995 < ε, nothing can clip; the old form rounded and reported a clip
    assert (_old_clipped_value(values, old_values, 1.0) - returns) ** 2 > (values - returns) ** 2
    loss, clipfrac = ppo_value_loss(values, old_values, returns, mask, 1.0)
    assert clipfrac.item() == 0.0 and loss.item() == 0.5 * 0.0005**2
    # float32, |V| ≤ 0.01, V_old in [0, 0.2], ε = 0.2 (the setting that logged 0.43): no value moved 0.2, none clips
    g = torch.Generator().manual_seed(0)
    values = (torch.rand(4096, generator=g) - 0.5) * 0.02
    old_values, returns = torch.rand(4096, generator=g) * 0.2, torch.zeros(4096)  # a fresh critic: V ≈ R ≈ 0
    ones = torch.ones(4096)
    assert ppo_value_loss(values, old_values, returns, ones, 0.2)[1].item() == 0.0
    old = ((_old_clipped_value(values, old_values, 0.2) - returns) ** 2 > (values - returns) ** 2).float().mean()
    assert old > 0.3  # what the old form counted
    # where V left the band and the clipped term is larger, it counts; exactly those
    values, returns = old_values + torch.randn(4096, generator=g), torch.randn(4096, generator=g)
    moved = (values - old_values).abs() > 0.2
    clipped = torch.clamp(values, old_values - 0.2, old_values + 0.2)
    expected = (moved & ((clipped - returns) ** 2 > (values - returns) ** 2)).float().mean()
    assert 0.1 < expected < 0.9
    assert ppo_value_loss(values, old_values, returns, ones, 0.2)[1].item() == pytest.approx(expected.item(), abs=0)


def test_callback_joins_each_row(tiny):
    policy, ref, tok = tiny
    calls = []

    def callback(step, model, roll):
        calls.append((step, model is policy, roll["responses"].shape[0]))
        return {"eval/seen": float(step)} if step == 2 else None

    cfg = PPOSettings(steps=2, prompts_per_step=2, max_new_tokens=4, lr=1e-3)
    hist = train_ppo(policy, ["hi", "Name a color:"], cfg, tok, _reward, ref, callback=callback)
    assert calls == [(1, True, 2), (2, True, 2)]  # after every iteration, with the policy and its rollouts
    assert "eval/seen" not in hist[0] and hist[1]["eval/seen"] == 2.0
