"""Our PPO in TRL's layout (a separate value model initialised like the reward model) equals TRL 1.9.0's
`trl.experimental.ppo.PPOTrainer`, the last TRL with PPO, given the same sampled completions and minibatch shuffles.
TRL 1.9.0 runs in a subprocess with its folder first on the path (`.ci/run` installs it into `.trl19/`)."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import alignbook.ppo as ppo
from alignbook.models import TINY, load_model, load_tokenizer

ROOT = Path(__file__).parents[1]
TRL19 = Path(os.environ.get("ALIGNBOOK_TRL19", ROOT / ".trl19"))
PROMPT, PAD = "Name a color:", "<|endoftext|>"
CONFIG = dict(
    batch=8,
    minibatches=2,
    epochs=2,
    steps=2,
    lr=1e-3,
    max_new=6,
    temperature=0.7,
    missing_eos_penalty=1.0,
    beta=0.1,
    vf_coef=0.1,
    clip=0.2,
    clip_value=0.2,
    gamma=1.0,
    lam=0.95,
)


def _responses(eos: int) -> list[torch.Tensor]:
    """Per step, 8 responses: EOS at different places (first slot, middle, last slot), some cut off, tokens after EOS
    left in."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(CONFIG["steps"]):
        r = torch.randint(100, 5000, (CONFIG["batch"], CONFIG["max_new"]), generator=g)
        for row, at in enumerate([2, 4, None, 0, 5, None, 3, 1]):
            if at is not None:
                r[row, at] = eos
        out.append(r)
    return out


def _permutations(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randperm(CONFIG["batch"], generator=g) for _ in range(n)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    if not (TRL19 / "trl").exists():
        if os.environ.get("CI"):
            pytest.fail(f"TRL 1.9.0 is not installed in {TRL19} (.ci/run installs it)")
        pytest.skip(f"TRL 1.9.0 not installed: pip install --no-deps --target {TRL19} trl==1.9.0")
    tmp = tmp_path_factory.mktemp("ppo")
    tok = load_tokenizer(TINY)
    tok.pad_token = PAD
    dirs = {k: str(tmp / k) for k in ["policy", "reward", "value"]}
    load_model(TINY, device="cpu", seed=0).save_pretrained(dirs["policy"])
    tok.save_pretrained(dirs["policy"])
    reward = load_model(TINY, kind="reward", device="cpu", seed=1, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        reward.score.weight.normal_(0, 0.5)  # scores of a useful size
    reward.save_pretrained(dirs["reward"])
    reward.save_pretrained(dirs["value"])  # the value model starts as the reward model
    responses = _responses(tok.eos_token_id)
    spec = dict(
        dirs=dirs,
        config=CONFIG,
        prompt=PROMPT,
        pad_token=PAD,
        responses=responses,
        out_dir=str(tmp / "trl"),
        permutations=_permutations(CONFIG["steps"] * CONFIG["epochs"]),
    )
    torch.save(spec, tmp / "setup.pt")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TRL19), str(ROOT)]), "TRL_EXPERIMENTAL_SILENCE": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests/scripts/trl19_ppo.py"), str(tmp / "setup.pt"), str(tmp / "trl.pt")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return spec, tok, torch.load(tmp / "trl.pt")


def _ours(spec, tok, monkeypatch, **changes):
    "Our train_ppo on the same models and completions; returns the history, the captured tensors and the final weights."
    from transformers import AutoModelForSequenceClassification

    d = spec["dirs"]
    policy, ref = load_model(d["policy"], device="cpu"), load_model(d["policy"], device="cpu").requires_grad_(False)
    reward = AutoModelForSequenceClassification.from_pretrained(d["reward"], num_labels=1).requires_grad_(False)
    value = AutoModelForSequenceClassification.from_pretrained(d["value"], num_labels=1)
    batches, captured = iter(spec["responses"]), dict(scores=[], advantages=[], whitened=[])

    def fixed_generate(model, input_ids, attention_mask, num_return_sequences=1, **kw):
        return torch.cat([input_ids.repeat_interleave(num_return_sequences, 0), next(batches)], 1)

    score, gae, whiten = ppo.score_responses, ppo.gae, ppo.masked_whiten

    def rec_score(*a):
        out = score(*a)
        captured["scores"].append(out.clone())
        return out

    def rec_gae(*a):
        out = gae(*a)
        captured["advantages"].append(out[0].clone())
        return out

    def rec_whiten(x, mask, shift_mean=True):
        out = whiten(x, mask, shift_mean)
        captured["whitened"].append(out.clone())
        return out

    monkeypatch.setattr(ppo, "score_responses", rec_score)
    monkeypatch.setattr(ppo, "gae", rec_gae)
    monkeypatch.setattr(ppo, "masked_whiten", rec_whiten)
    c = CONFIG
    cfg = ppo.PPOSettings(
        **{
            **dict(
                steps=c["steps"],
                prompts_per_step=c["batch"],
                samples_per_prompt=1,
                max_new_tokens=c["max_new"],
                temperature=c["temperature"],
                ppo_epochs=c["epochs"],
                num_minibatches=c["minibatches"],
                lr=c["lr"],
                lr_scheduler="linear",
                max_grad_norm=None,
                kl_coef=c["beta"],
                vf_coef=c["vf_coef"],
                clip=c["clip"],
                clip_value=c["clip_value"],
                gamma=c["gamma"],
                lam=c["lam"],
                missing_eos_penalty=c["missing_eos_penalty"],
                score_after_eos=True,
                seed=0,
            ),
            **changes,
        }
    )
    log = ppo.train_ppo(
        policy, [PROMPT], cfg, tok, ref=ref, reward_model=reward, value_model=value, sample_fn=fixed_generate
    )
    monkeypatch.undo()
    return pd.DataFrame(log), captured, dict(policy.named_parameters()), dict(value.named_parameters())


REL_TOL = 1e-3


def _start(spec) -> dict:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    d = spec["dirs"]
    return dict(
        policy=dict(AutoModelForCausalLM.from_pretrained(d["policy"]).named_parameters()),
        value=dict(AutoModelForSequenceClassification.from_pretrained(d["value"], num_labels=1).named_parameters()),
    )


def _relative(ours: dict, theirs: dict, start: dict) -> float:
    """|ours - theirs| / |theirs - start| over every weight of a model (the norm of the difference, relative to TRL's
    move)."""
    diff = sum(((p.detach() - theirs[n]) ** 2).sum() for n, p in ours.items())
    moved = sum(((theirs[n] - start[n].detach()) ** 2).sum() for n in ours)
    return (diff / moved).sqrt().item()


@pytest.mark.filterwarnings("ignore")
def test_train_ppo_equals_trl19(setup, monkeypatch):
    spec, tok, trl = setup
    log, got, policy, value = _ours(spec, tok, monkeypatch)
    assert len(trl["log"]) == CONFIG["steps"] == len(log)
    # the scores (before the missing-EOS penalty), the raw GAE advantages and the whitened ones, every iteration
    for key, tol in [("scores", 1e-5), ("advantages", 1e-4), ("whitened", 1e-4)]:
        assert len(got[key]) == len(trl[key]) == CONFIG["steps"], key
        for a, b, m in zip(got[key], trl[key], trl["masks"]):
            # TRL whitens over its own response mask and zeroes the padded slots later: compare where its mask is 1
            mask = m.bool() if key == "whitened" else torch.ones_like(b, dtype=torch.bool)
            assert mask.any() and mask.shape == a.shape, key
            torch.testing.assert_close(a[mask], b[mask], rtol=0, atol=tol, msg=key)
            if key == "whitened":
                assert (a[~mask] == 0).all(), "ours are zero outside the response"
    # the logged objective and losses
    for ours, theirs in [
        ("objective/kl", "objective/kl"),
        ("objective/scores", "objective/scores"),
        ("loss/policy_avg", "loss/policy_avg"),
        ("loss/value_avg", "loss/value_avg"),
        ("policy/clipfrac_avg", "policy/clipfrac_avg"),
        ("val/clipfrac_avg", "val/clipfrac_avg"),
    ]:  # TRL's approxkl averages over padded slots too: not compared
        torch.testing.assert_close(
            torch.tensor(log[ours].tolist()),
            torch.tensor([h[theirs] for h in trl["log"]]),
            rtol=1e-3,
            atol=1e-5,
            msg=ours,
        )
    # the weights after 2 iterations × 2 epochs × 2 minibatches = 8 AdamW steps. Measure: |θ_ours - θ_TRL| / |θ_TRL -
    # θ_start|,
    # over all of a model's weights. (Not the largest single difference: Adam turns float noise in a near-zero
    # gradient into
    # a full step of ±lr, so one weight in millions can differ by ~lr between two runs of TRL itself.)
    start = _start(spec)
    rel = {k: _relative(got_w, trl[k], start[k]) for k, got_w in [("policy", policy), ("value", value)]}
    print(
        f"weights after 8 AdamW steps, |ours - TRL 1.9| / |TRL's move|: policy {rel['policy']:.1e}, value model "
        f"{rel['value']:.1e}"
    )
    assert max(rel.values()) < REL_TOL


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("change", [dict(clip_value=None), dict(whiten_advantages=False), dict(score_after_eos=False)])
def test_one_detail_off_breaks_equality(setup, monkeypatch, change):
    "The tolerance can fail: with one detail changed, the weights land further from TRL's than the tolerance."
    spec, tok, trl = setup
    _, _, policy, value = _ours(spec, tok, monkeypatch, **change)
    start = _start(spec)
    rel = {k: _relative(got_w, trl[k], start[k]) for k, got_w in [("policy", policy), ("value", value)]}
    print(f"{change}: policy {rel['policy']:.1e}, value model {rel['value']:.1e}")
    assert max(rel.values()) > 10 * REL_TOL
