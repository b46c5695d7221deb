"""Our `train_grpo` equals TRL 1.16's GRPOTrainer given the same sampled completions, step for step: rewards,
advantages (through the logged reward statistics), losses, every logged metric, and the weights. Sampling is replaced on
both sides by the same fixed token ids (as in `test_trl_rloo.py`); everything after it (log-probs, reference log-probs,
KL, clipping, aggregation, optimizer steps) is each library's own. Four settings cover `dapo`, `grpo`, `bnpo` and
`dr_grpo`, β = 0 and β > 0, `num_iterations` 1 and 2, `scale_rewards` group / batch / none, clip-higher, masked
truncation, a sampling temperature, and two weighted reward functions, one of which skips rows (None)."""

import pytest
import torch
from datasets import Dataset
from transformers import PrinterCallback
from trl import GRPOConfig, GRPOTrainer

from alignbook.grpo import GRPOSettings, train_grpo
from alignbook.models import TINY, load_model, load_tokenizer

PROMPTS, ANSWERS = ["Name a color:", "Name a fruit:", "Name a number:"], ["blue", "apple", "7"]  # 4 tokens each
GROUP, MAX_NEW, STEPS, LR = 4, 6, 4, 5e-3
CASES = {
    "dapo, TRL's defaults": dict(loss_type="dapo"),
    "grpo, β, μ=2, no std, clip-higher, T=0.7": dict(
        loss_type="grpo",
        beta=0.1,
        num_iterations=2,
        scale_rewards="none",
        epsilon=0.05,
        epsilon_high=0.08,
        temperature=0.7,
    ),
    "dr_grpo, β, μ=2, batch std, masked truncation": dict(
        loss_type="dr_grpo",
        beta=0.2,
        num_iterations=2,
        scale_rewards="batch",
        epsilon=0.05,
        mask_truncated_completions=True,
    ),
    "bnpo, two weighted rewards": dict(loss_type="bnpo", reward_weights=[1.0, 0.5]),
}
# logged by both; TRL logs the rewards' statistics only on steps that sample
KEYS = [
    "loss",
    "grad_norm",
    "num_tokens",
    "reward",
    "reward_std",
    "frac_reward_zero_std",
    "rewards/length_reward/mean",
    "rewards/length_reward/std",
    "rewards/odd_length/mean",
    "kl",
    "entropy",
    "clip_ratio/low_mean",
    "clip_ratio/high_mean",
    "clip_ratio/region_mean",
    "completions/mean_length",
    "completions/clipped_ratio",
]


def length_reward(completions, **kwargs):
    return [len(c) / 10 for c in completions]


def odd_length(completions, answer, **kwargs):
    "1 for a text of odd length; None (does not apply) for the number prompt, whose `answer` is '7'."
    return [None if a == "7" else float(len(c) % 2) for c, a in zip(completions, answer)]


def _completions(eos: int) -> dict:
    "Per sampling round and prompt, GROUP completions: ended at different lengths, one cut off at MAX_NEW tokens."
    g, shapes = torch.Generator().manual_seed(0), [(2, True), (4, True), (MAX_NEW, False), (1, True)]
    return {
        (k, p): [torch.randint(100, 5000, (n,), generator=g).tolist() + ([eos] if ended else []) for n, ended in shapes]
        for k in range(STEPS)
        for p in range(len(PROMPTS))
    }


def _settings(case: dict) -> dict:
    return {k: v for k, v in case.items() if k != "reward_weights"}, case.get("reward_weights")


def _reward_fns(case):
    return [length_reward, odd_length] if case.get("reward_weights") else [length_reward]


def _trl_run(path, tok, batches, case, tmp_path, monkeypatch):
    kw, weights = _settings(case)
    args = GRPOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=GROUP * len(PROMPTS),
        num_generations=GROUP,
        max_completion_length=MAX_NEW,
        learning_rate=LR,
        lr_scheduler_type="constant",
        max_steps=STEPS,
        use_cpu=True,
        bf16=False,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        optim="adamw_torch",
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed=0,
        reward_weights=weights,
        **kw,
    )
    trainer = GRPOTrainer(
        model=str(path),
        reward_funcs=_reward_fns(case),
        args=args,
        processing_class=tok,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS, "answer": ANSWERS}),
    )
    trainer.remove_callback(PrinterCallback)
    prompt_ids, rounds = [tok(p)["input_ids"] for p in PROMPTS], iter(range(STEPS))

    def fixed_generation(ids, images, multimodal_fields, num_generations, has_tool_images=False):
        k, handed = next(rounds), {}
        out = []
        for row in ids:
            p = prompt_ids.index(list(row))
            out.append(batches[k, p][handed.get(p, 0)])
            handed[p] = handed.get(p, 0) + 1
        return out, None

    monkeypatch.setattr(trainer, "_generate_single_turn", fixed_generation)
    trainer.train()
    return [h for h in trainer.state.log_history if "loss" in h], dict(trainer.model.named_parameters())


def _our_run(path, tok, batches, case, reference=True):
    kw, weights = _settings(case)
    rounds, prompt_ids = iter(range(STEPS)), [tok(p)["input_ids"] for p in PROMPTS]

    def fixed_generate(model, input_ids, attention_mask, num_return_sequences, **kw):
        k = next(rounds)
        rows = [
            c + [tok.eos_token_id] * (MAX_NEW - len(c))  # anything after the EOS is masked
            for prompt in input_ids.tolist()
            for c in batches[k, prompt_ids.index(prompt)]
        ]
        return torch.cat([input_ids.repeat_interleave(num_return_sequences, 0), torch.tensor(rows)], 1)

    policy = load_model(path, device="cpu")
    ref = load_model(path, device="cpu").requires_grad_(False) if kw.get("beta") else None
    cfg = GRPOSettings(
        steps=STEPS,
        prompts_per_step=len(PROMPTS),
        num_generations=GROUP,
        max_new_tokens=MAX_NEW,
        lr=LR,
        reward_weights=weights,
        **kw,
    )
    rows = [{"prompt": p, "answer": a} for p, a in zip(PROMPTS, ANSWERS)]
    history = train_grpo(policy, rows, cfg, tok, _reward_fns(case), ref, sample_fn=fixed_generate)
    return history, dict(policy.named_parameters())


def _distance(a: dict, b: dict) -> float:
    return sum(((a[n].detach() - b[n].detach()) ** 2).sum() for n in a).sqrt().item()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tok = load_tokenizer(TINY)
    tok.pad_token = "<|endoftext|>"  # not the EOS, so a padded slot is not an ended answer
    path = tmp_path_factory.mktemp("tiny") / "model"
    load_model(TINY, device="cpu").save_pretrained(path)
    tok.save_pretrained(path)
    return path, tok, _completions(tok.eos_token_id)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", list(CASES))
def test_train_grpo_equals_trl(name, tiny, tmp_path, monkeypatch):
    path, tok, batches = tiny
    case = CASES[name]
    trl_log, theirs = _trl_run(path, tok, batches, case, tmp_path, monkeypatch)
    ours_log, ours = _our_run(path, tok, batches, case)
    assert len(trl_log) == len(ours_log) == STEPS
    for step, (t, o) in enumerate(zip(trl_log, ours_log), 1):
        for key in (k for k in KEYS if k in t and t[k] is not None):
            assert o[key] == pytest.approx(t[key], rel=1e-4, abs=1e-6), (
                f"step {step}, {key}: ours {o[key]}, TRL {t[key]}"
            )
    if case.get("num_iterations", 1) > 1:  # the reused batch was clipped somewhere, so the clip metrics were tested
        assert max(o["clip_ratio/region_mean"] for o in ours_log) > 0
    start = dict(load_model(path, device="cpu").named_parameters())
    moved, apart = _distance(theirs, start), _distance(ours, theirs)
    print(f"\n{name}: TRL's weights moved {moved:.4f}; ours are {apart:.2e} from TRL's ({apart / moved:.1e} of it)")
    assert apart < 1e-3 * moved


TEETH = {  # one detail changed on our side, and which case it breaks
    "no division by the std": ("dapo, TRL's defaults", dict(scale_rewards="none")),
    "dapo's aggregation instead of grpo's": ("grpo, β, μ=2, no std, clip-higher, T=0.7", dict(loss_type="dapo")),
    "no bias correction of the KL term": (
        "dr_grpo, β, μ=2, batch std, masked truncation",
        dict(kl_bias_correction=False),
    ),
}


@pytest.mark.filterwarnings("ignore")
def test_tolerance_has_teeth(tiny, tmp_path, monkeypatch):
    "Each changed detail lands our weights more than 10 times the tolerance from TRL's."
    path, tok, batches = tiny
    start = dict(load_model(path, device="cpu").named_parameters())
    for detail, (name, change) in TEETH.items():
        _, theirs = _trl_run(path, tok, batches, CASES[name], tmp_path / detail.replace(" ", "_"), monkeypatch)
        _, ours = _our_run(path, tok, batches, CASES[name] | change)
        moved, apart = _distance(theirs, start), _distance(ours, theirs)
        print(f"\n{detail}: {apart / moved:.1e} of TRL's move (tolerance 1e-3)")
        assert apart > 10 * 1e-3 * moved, detail
