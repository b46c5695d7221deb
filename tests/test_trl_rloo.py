"""Our REINFORCE loop (leave-one-out baseline, KL in the reward, clipped gradient, AdamW) equals TRL's RLOOTrainer
given the same sampled completions. Sampling is replaced on both sides by the same fixed token ids; everything after it
(log-probs, reference log-probs, KL, advantages, loss, optimizer step) is each library's own."""

import pandas as pd
import pytest
import torch
from datasets import Dataset
from transformers import PrinterCallback
from trl import RLOOConfig, RLOOTrainer

from alignbook.models import TINY, load_model, load_tokenizer
from alignbook.policy_gradient import ReinforceSettings, train_reinforce

PROMPT, GROUP, MAX_NEW, STEPS, LR, BETA = "Name a color:", 4, 6, 3, 1e-3, 0.1


def _completions(eos: int) -> list[list[list[int]]]:
    "For each step, GROUP completions: three ended by EOS at different lengths, one cut off at the limit."
    g = torch.Generator().manual_seed(0)
    shapes = [(3, True), (5, True), (MAX_NEW, False), (1, True)]
    return [
        [torch.randint(100, 5000, (n,), generator=g).tolist() + ([eos] if ended else []) for n, ended in shapes]
        for _ in range(STEPS)
    ]


def _text_reward(texts):
    return [len(t) / 10 for t in texts]


def _trl_run(path, tok, batches, tmp_path, monkeypatch):
    args = RLOOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=GROUP,
        num_generations=GROUP,
        max_completion_length=MAX_NEW,
        beta=BETA,
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
    )
    trainer = RLOOTrainer(
        model=str(path),
        reward_funcs=lambda prompts, completions, **kw: _text_reward(completions),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": [PROMPT] * 16}),
        processing_class=tok,
    )
    trainer.remove_callback(PrinterCallback)
    calls, prompt_ids = iter(batches), tok(PROMPT)["input_ids"]

    def fixed_generation(ids, images, multimodal_fields):
        assert [list(i) for i in ids] == [prompt_ids] * GROUP
        return next(calls)

    monkeypatch.setattr(trainer, "_generate_single_turn", fixed_generation)
    trainer.train()
    return [h for h in trainer.state.log_history if "kl" in h], dict(trainer.model.named_parameters())


def _our_run(path, tok, batches, beta, monkeypatch):
    calls = iter(batches)

    def fixed_generate(model, input_ids, attention_mask, **kw):
        rows = [c + [tok.eos_token_id] * (MAX_NEW - len(c)) for c in next(calls)]  # anything after EOS is masked
        return torch.cat([input_ids.repeat_interleave(GROUP, 0), torch.tensor(rows)], 1)

    policy, ref = load_model(path, device="cpu"), load_model(path, device="cpu")
    for p in ref.parameters():
        p.requires_grad_(False)
    s = ReinforceSettings(
        steps=STEPS, prompts_per_step=1, samples_per_prompt=GROUP, max_new_tokens=MAX_NEW, lr=LR, kl_coef=beta
    )
    log = train_reinforce(
        policy, [PROMPT], s, tok, lambda texts, finished: _text_reward(texts), ref, sample_fn=fixed_generate
    )
    return pd.DataFrame(log), dict(policy.named_parameters())


@pytest.mark.filterwarnings("ignore")
def test_train_reinforce_equals_trl_rloo(tmp_path, monkeypatch):
    tok = load_tokenizer(TINY)
    path = tmp_path / "tiny"
    load_model(TINY, device="cpu").save_pretrained(path)
    tok.save_pretrained(path)
    batches = _completions(tok.eos_token_id)
    trl_log, theirs = _trl_run(path, tok, batches, tmp_path, monkeypatch)
    log, ours = _our_run(path, tok, batches, BETA, monkeypatch)

    assert (
        len(trl_log) == STEPS and log.kl_per_response.abs().iloc[1:].min() > 1e-3
    )  # the policy moved, so the KL term is live
    as_tensor = lambda xs: torch.tensor(list(xs), dtype=torch.float32)
    torch.testing.assert_close(as_tensor(log.reward), as_tensor(h["reward"] for h in trl_log), rtol=0, atol=1e-6)
    torch.testing.assert_close(
        as_tensor(log.kl), as_tensor(h["kl"] for h in trl_log), rtol=1e-3, atol=1e-5
    )  # TRL logs KL per token
    # Each step moves every weight by about LR (Adam); after 3 steps ours and TRL's agree to 1/100 of one step's move.
    tol = LR / 100
    for n, p in ours.items():
        torch.testing.assert_close(p, theirs[n].detach(), rtol=0, atol=tol, msg=n)
    # the tolerance has teeth: leaving out the KL term (β = 0) lands every weight tensor further from TRL's than `tol`
    _, no_kl = _our_run(path, tok, batches, 0.0, monkeypatch)
    assert min((p - theirs[n]).abs().max().item() for n, p in no_kl.items()) > 2 * tol
