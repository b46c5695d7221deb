"""REINFORCE step benchmarks on SmolLM2-135M-Instruct (CPU), measured in one run, shared frozen trunk vs two full passes
(`ReinforceSettings.shared_trunk`), LoRA r=8 on q/v of layers 26-29 as in chapter 6:
(1) the log-prob part of a step (policy forward+backward and reference forward) on a fixed batch, median of repeats;
(2) whole `train_reinforce` steps (sampling included), the same seed for both, so both see the same samples.
Prints shared ÷ full for each (lower is better).
Run: python benchmarks/policy_gradient.py [--repeats 5] [--steps 4] [--rows 16] [--new-tokens 32]
"""

import argparse
import statistics
import time

import torch
from verdict import verdict

from alignbook.distributions import completion_mask_until_stop
from alignbook.lora import inject_lora
from alignbook.models import load_model, load_tokenizer
from alignbook.policy_gradient import ReinforceSettings, first_trainable_layer, policy_and_ref_logprobs, train_reinforce
from alignbook.sampling import generate

TARGETS = [f"layers.{i}.self_attn.{p}" for i in range(26, 30) for p in ["q_proj", "v_proj"]]
QUESTIONS = [
    "What is the capital of France?",
    "Name a primary color.",
    "What is 7 times 8?",
    "How many days are in a week?",
]


def logprob_pass(policy, ref, batch, first_layer, repeats):
    "Median seconds of policy forward+backward plus reference forward (after one warm-up)."
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        logp, _ = policy_and_ref_logprobs(policy, ref, *batch, first_layer)
        logp.sum().backward()
        policy.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def main(repeats, steps, rows, new_tokens):
    torch.manual_seed(0)
    tok, ref = load_tokenizer(), load_model(device="cpu")
    for p in ref.parameters():
        p.requires_grad_(False)
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        for q in QUESTIONS
    ]

    policy = inject_lora(load_model(device="cpu"), TARGETS, r=8, alpha=16)
    first = first_trainable_layer(policy, ref)
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    seqs = generate(
        policy, **enc, do_sample=True, top_k=0, max_new_tokens=new_tokens, num_return_sequences=rows // len(prompts)
    )
    P = enc["input_ids"].shape[1]
    gen = completion_mask_until_stop(seqs[:, P:], [tok.eos_token_id])
    n = rows // len(prompts)
    attn = torch.cat([enc["attention_mask"].repeat_interleave(n, 0), gen], 1)
    comp = torch.cat([torch.zeros_like(enc["attention_mask"]).repeat_interleave(n, 0), gen], 1)
    policy.train()
    full = logprob_pass(policy, ref, (seqs, attn, comp), None, repeats)
    shared = logprob_pass(policy, ref, (seqs, attn, comp), first, repeats)
    print(
        f"log-prob pass, {tuple(seqs.shape)} tokens: full {full:.3f} s, shared trunk {shared:.3f} s, ratio "
        f"{shared / full:.2f}"
    )

    reward = lambda texts, finished: [float(f) * max(0.0, 1 - len(t.split()) / 24) for t, f in zip(texts, finished)]
    per_step = {}
    for flag in (False, True):
        torch.manual_seed(1)
        policy = inject_lora(load_model(device="cpu"), TARGETS, r=8, alpha=16)
        s = ReinforceSettings(
            steps=steps,
            prompts_per_step=len(prompts),
            samples_per_prompt=n,
            max_new_tokens=new_tokens,
            lr=3e-3,
            kl_coef=0.1,
            shared_trunk=flag,
        )
        t = time.perf_counter()
        train_reinforce(policy, prompts, s, tok, reward, ref)
        per_step[flag] = (time.perf_counter() - t) / steps
    print(
        f"train_reinforce step ({steps} steps, {rows} samples, <= {new_tokens} new tokens): full "
        f"{per_step[False]:.2f} s, "
        f"shared trunk {per_step[True]:.2f} s, ratio {per_step[True] / per_step[False]:.2f}"
    )
    verdict("REINFORCE step shared trunk ÷ two full passes", per_step[True] / per_step[False], 1.0)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    a = ap.parse_args()
    main(a.repeats, a.steps, a.rows, a.new_tokens)
