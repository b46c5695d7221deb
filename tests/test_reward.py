"Reward-model losses, scoring and win rate, cross-checked against TRL's RewardTrainer and transformers."

import pytest
import torch
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st
from trl import RewardConfig, RewardTrainer

from alignbook.models import TINY, load_model
from alignbook.reward import (
    RewardSettings,
    cache_features,
    check_reward_model,
    collate_pairs,
    fit_bradley_terry,
    listwise_loss,
    load_reward_model,
    pairwise_loss,
    reward_scores,
    scores_from_features,
    simulate_comparisons,
    stored_features,
    tokenize_pairs,
    top_hidden,
    train_reward,
    trunk_states,
    win_rate,
)
from alignbook.sft import freeze_all_but, top_layers

floats = st.floats(-20, 20, width=32)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(floats, floats), min_size=1, max_size=16))
def test_plackett_luce_on_two_items_is_bradley_terry(pairs):
    r = torch.tensor(pairs, dtype=torch.float64)
    torch.testing.assert_close(listwise_loss(r), pairwise_loss(r[:, 0], r[:, 1]), rtol=1e-9, atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(floats, floats), min_size=1, max_size=16), st.floats(-50, 50))
def test_pairwise_loss_shift_invariance_and_gradient(pairs, c):
    r = torch.tensor(pairs, dtype=torch.float64)
    rc, rr = r[:, 0].clone().requires_grad_(), r[:, 1]
    torch.testing.assert_close(pairwise_loss(rc + c, rr + c), pairwise_loss(rc, rr))
    pairwise_loss(rc, rr).backward()
    torch.testing.assert_close(rc.grad, -(1 - torch.sigmoid(rc - rr)).detach() / len(rc))


def test_loss_equals_trl_compute_loss_with_margin_and_centering():
    model, tok = load_reward_model(TINY)
    rows = [
        dict(prompt="\n\nHuman: hi\n\nAssistant:", chosen=" Hello there!", rejected=" No.", margin=0.5),
        dict(prompt="\n\nHuman: 2+2?\n\nAssistant:", chosen=" 4", rejected=" 5, I think", margin=1.5),
    ]
    args = RewardConfig(
        output_dir="/tmp/alignbook_test_rm",
        report_to=[],
        use_cpu=True,
        bf16=False,
        center_rewards_coefficient=0.01,
        per_device_train_batch_size=2,
        activation_checkpointing=False,
    )
    trainer = RewardTrainer(model, args=args, processing_class=tok, train_dataset=Dataset.from_list(rows))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    with torch.no_grad():
        theirs = trainer.compute_loss(model, dict(batch))
        pairs = tokenize_pairs(rows, tok)
        b = collate_pairs(pairs, tok.pad_token_id)
        assert torch.equal(b["input_ids"], batch["input_ids"])
        r = reward_scores(model, **b)
        ours = pairwise_loss(r[:2], r[2:], margin=torch.tensor([0.5, 1.5]), center_coef=0.01)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("side", ["left", "right"])
def test_reward_scores_equal_transformers_with_a_dedicated_pad(side):
    model, tok = load_reward_model(TINY)
    tok.padding_side = side
    b = tok(
        ["a long sentence with many words" + tok.eos_token, "short" + tok.eos_token, "x"],
        return_tensors="pt",
        padding=True,
    )
    with torch.no_grad():
        torch.testing.assert_close(reward_scores(model, **b), model(**b).logits.squeeze(-1), rtol=1e-5, atol=1e-6)


def test_cached_features_equal_the_full_model():
    model, tok = load_reward_model(TINY, num_hidden_layers=4)
    g = torch.Generator().manual_seed(0)
    pairs = [
        dict(
            chosen_ids=torch.randint(3, 1000, (int(n),), generator=g).tolist(),
            rejected_ids=torch.randint(3, 1000, (int(m),), generator=g).tolist(),
        )
        for n, m in torch.randint(1, 40, (6, 2), generator=g)
    ]
    for k in (1, 2, 4):
        feats = cache_features(model, pairs, k, tok.pad_token_id, batch_size=4)
        with torch.no_grad():
            rc, rr = scores_from_features(model, feats, k)
            full = reward_scores(model, **collate_pairs(pairs, tok.pad_token_id))
        torch.testing.assert_close(torch.cat([rc, rr]), full, rtol=1e-5, atol=1e-6)
    for k in (0, 5):  # no layer to train, or more layers than the model has
        with pytest.raises(ValueError, match="trained_layers must be in 1..4"):
            cache_features(model, pairs, k, tok.pad_token_id)


def test_trunk_states_then_top_hidden_equal_the_full_model_for_either_padding_side():
    model = load_model(TINY, num_hidden_layers=4).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 1000, (3, 9), generator=g)
    for side in ("left", "right"):
        mask = torch.ones_like(ids)
        if side == "left":
            mask[0, :4] = 0
        else:
            mask[0, -4:] = 0
        with torch.no_grad():
            full = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
            for first in (1, 3):
                h = top_hidden(model, trunk_states(model, ids, mask, first), first)
                real = mask.bool()
                torch.testing.assert_close(model.lm_head(h)[real], full.logits[real], rtol=1e-5, atol=1e-5)
            if side == "left":  # the check can fail: without the mask, left padding is read and positions shift
                blind = top_hidden(model, trunk_states(model, ids, None, 1), 1)
                assert (model.lm_head(blind)[mask.bool()] - full.logits[mask.bool()]).abs().max() > 1e-2


def test_bradley_terry_recovers_strengths():
    g = torch.Generator().manual_seed(3)
    true = torch.randn(10, generator=g)
    w, l = simulate_comparisons(true, 5000, g)
    fitted = fit_bradley_terry(w, l, 10)
    assert torch.corrcoef(torch.stack([fitted, true]))[0, 1] > 0.97
    assert abs(fitted.mean()) < 1e-5


def test_win_rate_wilson_interval():
    p, lo, hi = win_rate(torch.tensor([1.0] * 50 + [0.0] * 50), torch.full((100,), 0.5))
    assert p == 0.5 and abs(lo - 0.4038) < 1e-3 and abs(hi - 0.5962) < 1e-3  # Wilson 95 % interval for 50/100
    p, lo, hi = win_rate(torch.zeros(10), torch.zeros(10))  # all ties count half
    assert p == 0.5


def test_bad_input():
    _, tok = load_reward_model(TINY)
    rows = [
        dict(prompt="p", chosen="a", rejected="a"),
        dict(prompt="p", chosen=" ", rejected="b"),
        dict(prompt="p" * 2000, chosen="a", rejected="b"),
        dict(prompt="p", chosen="a", rejected="b"),
    ]
    with pytest.warns(UserWarning, match="dropped 3 of 4 pairs"):
        assert len(tokenize_pairs(rows, tok, max_length=64)) == 1
    with pytest.raises(ValueError, match="one output"):
        check_reward_model(load_model(TINY, kind="reward", num_labels=3))
    with pytest.raises(ValueError, match="not in the vocabulary"):
        load_reward_model(TINY, pad_token="<|no such token|>")


def test_paired_accuracy_sign_test_equals_scipy_binomtest():
    scipy_stats = pytest.importorskip("scipy.stats")
    from alignbook.reward import pair_outcomes, paired_accuracy

    g = torch.Generator().manual_seed(0)
    for n, p_a, p_b in [(50, 0.7, 0.6), (152, 0.7, 0.66), (400, 0.55, 0.55)]:
        a = pair_outcomes(p_a - torch.rand(n, generator=g), torch.zeros(n))  # right with probability p_a
        b = pair_outcomes(p_b - torch.rand(n, generator=g), torch.zeros(n))
        r = paired_accuracy(a, b)
        k, m = r["a_better"], r["a_better"] + r["b_better"]
        assert r["p_value"] == pytest.approx(scipy_stats.binomtest(k, m, 0.5).pvalue, rel=1e-9)
        d = (a - b).numpy()
        assert r["difference"] == pytest.approx(d.mean()) and r["half_width"] == pytest.approx(
            1.96 * d.std(ddof=1) / n**0.5
        )
    ties = paired_accuracy(torch.tensor([0.5, 1.0, 1.0]), torch.tensor([0.0, 0.5, 1.0]))
    assert (ties["a_better"], ties["b_better"]) == (2, 0)  # a half point counts as a direction, as in win_rate


def test_stored_features_compute_once_and_follow_the_trunk(tmp_path, monkeypatch):
    "A second call loads what the first stored; weights below the layer name another folder, weights above do not."
    monkeypatch.setenv("ALIGNBOOK_CACHE", str(tmp_path))
    model = load_model(TINY, kind="reward", device="cpu", seed=1, pad_token_id=0)
    pairs = [dict(chosen_ids=[5, 6, 7, 2], rejected_ids=[5, 6, 9]), dict(chosen_ids=[8, 2], rejected_ids=[8, 3, 3, 3])]
    first = stored_features(model, pairs, 1, 0)
    folders = lambda: sorted(p.name for p in (tmp_path / "features").iterdir() if p.is_dir())  # noqa: E731
    assert len(folders()) == 1
    again = stored_features(model, pairs, 1, 0)
    fresh = cache_features(model, pairs, 1, 0)
    for a, b, c in zip(first, again, fresh):
        assert torch.equal(a["chosen"], b["chosen"]) and torch.equal(a["rejected"], c["rejected"])
        assert a["layer"] == b["layer"] == 1
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] += 1.0  # above the layer: the same features
    stored_features(model, pairs, 1, 0)
    assert len(folders()) == 1
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] += 1.0  # below it: other features
    moved = stored_features(model, pairs, 1, 0)
    assert len(folders()) == 2 and not torch.equal(moved[0]["chosen"], first[0]["chosen"])


def test_features_refuse_trainable_weights_below_their_layer():
    "Chapter 3's check, shared: on features cached at layer 1, weights below it would get no gradient."
    model = load_model(TINY, kind="reward", device="cpu", seed=1, pad_token_id=0)
    feats = cache_features(model, [dict(chosen_ids=[5, 6, 7, 2], rejected_ids=[5, 6, 9])] * 2, 1, 0)
    with pytest.raises(ValueError, match="get no gradient"):  # every weight trainable
        train_reward(model, feats, RewardSettings(steps=1, batch_size=2, trained_layers=1))
    freeze_all_but(model, top_layers(model, 1) + ["score."])
    assert len(train_reward(model, feats, RewardSettings(steps=1, batch_size=2, trained_layers=1))) == 1
