"""DPO's pieces: the loss's closed forms, the three references, the shared trunk, and every bad input refused or
counted."""

import math
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from alignbook.dpo import (
    DPOSettings,
    adapters_off,
    collate_preferences,
    dpo_loss,
    policy_and_reference_logps,
    precompute_reference,
    reference_logps,
    tokenize_preferences,
    train_dpo,
)
from alignbook.lora import inject_lora, lora_layers, merge
from alignbook.models import TINY, load_model, load_tokenizer
from alignbook.policy_gradient import first_trainable_layer

ROWS = [
    dict(prompt="Q: What color is the sky?\nA:", chosen=" Blue.", rejected=" Green."),
    dict(prompt="Hi", chosen=" there, friend.", rejected="!"),
    dict(prompt="2 + 2 =", chosen=" 4", rejected=" 5"),
]
TARGETS = ["layers.1.self_attn.q_proj", "layers.1.self_attn.v_proj"]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TINY)


def _trained_lora():
    policy = inject_lora(load_model(TINY, device="cpu"), TARGETS, r=4, alpha=8)
    with torch.no_grad():
        for layer in lora_layers(policy).values():
            layer.lora_B.weight.normal_(0, 0.5)
    return policy


def test_sigmoid_loss_is_bradley_terry_on_the_implicit_reward():
    "-log σ(β(h_w − h_l)) written out by hand, against a different route: the softmax over the two implicit rewards."
    g = torch.Generator().manual_seed(0)
    lw, ll, rw, rl = (torch.randn(64, generator=g) * 5 for _ in range(4))
    r = 0.3 * torch.stack([lw - rw, ll - rl], -1)
    torch.testing.assert_close(dpo_loss(lw, ll, rw, rl, beta=0.3), -r.log_softmax(-1)[:, 0])
    # robust with ε = 0 is sigmoid; 'ipo' is minimal at the target margin 1/(2β) per token
    torch.testing.assert_close(dpo_loss(lw, ll, rw, rl, 0.3, "robust", 0.0), dpo_loss(lw, ll, rw, rl, 0.3))
    two = torch.full((64,), 2.0)
    assert dpo_loss(rl + 2 / 0.6, rl, rl, rl, 0.3, "ipo", 0.0, two, two).abs().max() < 1e-10
    with pytest.raises(ValueError, match="ipo' needs"):
        dpo_loss(lw, ll, rw, rl, 0.3, "ipo")
    with pytest.raises(ValueError, match="loss_type must be"):
        dpo_loss(lw, ll, rw, rl, 0.3, "kto")


def test_three_references_agree(tok):
    policy, start = _trained_lora(), load_model(TINY, device="cpu").requires_grad_(False)
    rows = tokenize_preferences(ROWS, tok)
    batch = collate_preferences(rows, tok.pad_token_id)
    copy, off = torch.cat(reference_logps(policy, batch, start)), torch.cat(reference_logps(policy, batch))
    pre = precompute_reference(policy, rows, tok.pad_token_id, batch_size=2)
    torch.testing.assert_close(copy, off, rtol=0, atol=1e-5)
    torch.testing.assert_close(
        torch.tensor([r[k] for k in ("ref_chosen_logps", "ref_rejected_logps") for r in pre]), copy, rtol=0, atol=1e-4
    )
    with torch.no_grad():
        theirs = torch.cat(policy_and_reference_logps(policy, batch)[0])
    assert (theirs - copy).abs().max() > 0.01  # the adapters matter, so "off" is a real check
    assert lora_layers(policy)["model." + TARGETS[0]].scaling == 2.0


def test_shared_trunk_equals_full_passes(tok):
    policy = _trained_lora()
    batch = collate_preferences(tokenize_preferences(ROWS, tok), tok.pad_token_id)
    first = first_trainable_layer(policy, policy)
    assert first == 1
    full, shared = (
        policy_and_reference_logps(policy, batch),
        policy_and_reference_logps(policy, batch, first_layer=first),
    )
    for a, b in zip(full[0] + full[1], shared[0] + shared[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_rows_that_cannot_teach_are_dropped_and_counted(tok):
    bad = [
        ROWS[0],
        dict(ROWS[0], rejected=" Blue."),
        dict(ROWS[0], chosen="  "),
        dict(ROWS[0], rejected=[]),
        dict(prompt="Q: " + "very " * 40 + "long?\nA:", chosen=" Yes.", rejected=" No."),
        dict(
            prompt="Q: Colors?\nA:",
            chosen=" Red, green, yellow, orange, purple and blue.",
            rejected=" Red, green, yellow, orange, purple and black.",
        ),
    ]
    with pytest.warns(UserWarning) as caught:
        kept = tokenize_preferences(bad, tok, max_length=12)
    msg = str(caught[0].message)
    assert len(kept) == 1 and "dropped 5 of 6" in msg
    for why in [
        "1 chosen == rejected",
        "2 empty completion",
        "1 prompt fills max_length=12",
        "1 chosen and rejected equal within max_length=12",
    ]:
        assert why in msg, why
    # keep_end keeps the prompt's end: the long prompt is kept, the pair that differs at its end too
    with pytest.warns(UserWarning):
        assert len(tokenize_preferences(bad, tok, max_length=12, truncation="keep_end")) == 3
    with pytest.raises(TypeError, match="row 0: field 'chosen' is a int"):
        tokenize_preferences([dict(ROWS[0], chosen=3)], tok)
    with pytest.raises(ValueError, match="truncation must be"):
        tokenize_preferences(ROWS, tok, truncation="middle")


def test_a_degenerate_pair_is_stuck_at_log_2():
    "Why equal pairs are dropped: the margin is 0 whatever the policy, so the loss is log 2 and its gradient 0."
    lp = torch.tensor([-3.0], requires_grad=True)
    loss = dpo_loss(lp, lp, torch.tensor([-1.0]), torch.tensor([-1.0]))
    loss.sum().backward()
    assert abs(loss.item() - math.log(2)) < 1e-7 and lp.grad.abs().item() == 0


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(label_smoothing=0.1), "use loss_type='robust'"),
        (dict(beta=0.0), "beta must be"),
        (dict(beta=float("nan")), "beta must be"),
        (dict(loss_type="kto"), "loss_type must be"),
        (dict(max_length=1), "max_length must be"),
        (dict(truncation="middle"), "truncation must be"),
        (dict(label_smoothing=0.5, loss_type="robust"), "label_smoothing must be"),
    ],
)
def test_bad_settings(bad, match):
    with pytest.raises(ValueError, match=match):
        DPOSettings(**bad)


def test_bad_references(tok):
    with pytest.raises(ValueError, match="no LoRA adapters"):
        train_dpo(load_model(TINY, device="cpu"), ROWS, DPOSettings(steps=1), tok)
    policy = inject_lora(load_model(TINY, device="cpu"), TARGETS, r=4)
    with pytest.raises(ValueError, match="the reference model is the policy"):
        train_dpo(policy, ROWS, DPOSettings(steps=1), tok, ref=policy)
    head = inject_lora(load_model(TINY, device="cpu"), TARGETS, r=4, modules_to_save=["lm_head"])
    with pytest.raises(ValueError, match="weights outside the LoRA adapters"):
        train_dpo(head, ROWS, DPOSettings(steps=1), tok)
    merged = _trained_lora()
    for layer in lora_layers(merged).values():
        merge(layer)
    with pytest.raises(ValueError, match="merged LoRA adapters"), adapters_off(merged):
        pass
    with pytest.raises(ValueError, match="need the tokenizer"):
        train_dpo(policy, ROWS, DPOSettings(steps=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="no training rows"):
            train_dpo(policy, [dict(ROWS[0], rejected=" Blue.")], DPOSettings(steps=1), tok)


def test_nan_stops_before_any_weight_changes(tok):
    policy = inject_lora(load_model(TINY, device="cpu"), TARGETS, r=4)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    rows = [dict(r, ref_chosen_logps=float("nan"), ref_rejected_logps=0.0) for r in tokenize_preferences(ROWS, tok)]
    with pytest.raises(FloatingPointError, match="step 1: the loss is nan"):
        train_dpo(policy, rows, DPOSettings(steps=2, batch_size=3, precompute_ref=False), tok)
    assert all(torch.equal(v, before[k]) for k, v in policy.state_dict().items())


def test_an_earlier_bf16_accelerator_does_not_leak_into_training():
    """TRL's configs default to bf16=True, which sets accelerate's one-per-process state; our trainers must not inherit
    it."""
    script = Path(__file__).parent / "scripts" / "mixed_precision_state.py"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
