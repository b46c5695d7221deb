"""Tokens per second of alignbook's generation loop divided by transformers' `model.generate`, measured in the same run.

Same model (SmolLM2-135M-Instruct, CPU), same prompts, same settings; batch 1 and 8, greedy and sampled. Both produce
the
same tokens (asserted), so the ratio of tokens/s is the inverse ratio of wall times. Target: ratio >= 1.0.
Run: python benchmarks/sampling.py [--new-tokens 64] [--repeats 3]
"""

import argparse
import statistics
import time

import torch
from verdict import verdict

from alignbook.models import load_model, load_tokenizer
from alignbook.sampling import generate

QUESTIONS = [
    "What is the capital of France?",
    "Give me two tips for sleeping well.",
    "Describe a sunset.",
    "Write a haiku about autumn.",
    "Why is the sky blue?",
    "Suggest a name for a robot.",
    "What should I cook tonight?",
    "Explain photosynthesis in one sentence.",
]


def timed(fn, repeats):
    "Median wall time of `fn()` over `repeats` runs (after one warm-up), and its last output."
    fn()
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main(new_tokens=64, repeats=3):
    torch.set_num_threads(torch.get_num_threads())
    model, tok = load_model(device="cpu"), load_tokenizer(padding_side="left")
    chats = [
        tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        for q in QUESTIONS
    ]
    # no stop token: every row generates exactly `new_tokens`, so both sides do the same work
    common = dict(max_new_tokens=new_tokens, eos_token_id=[], pad_token_id=tok.pad_token_id)
    print(f"{'batch':>5} {'mode':>8} {'ours tok/s':>11} {'transformers tok/s':>19} {'ratio':>6}")
    for bs in (1, 8):
        batch = tok(chats[:bs], return_tensors="pt", padding=True)
        for mode, knobs in [
            ("greedy", dict(do_sample=False)),
            ("sampled", dict(do_sample=True, temperature=0.8, top_k=50, top_p=0.9)),
        ]:

            def ours():
                torch.manual_seed(0)
                return generate(model, **batch, **common, **knobs)

            def theirs():
                torch.manual_seed(0)
                return model.generate(**batch, **common, **knobs)

            t_ours, out_ours = timed(ours, repeats)
            t_theirs, out_theirs = timed(theirs, repeats)
            assert torch.equal(out_ours, out_theirs), "outputs differ: the comparison would be meaningless"
            n = bs * new_tokens
            print(f"{bs:>5} {mode:>8} {n / t_ours:>11.1f} {n / t_theirs:>19.1f} {t_theirs / t_ours:>6.2f}")
            verdict(f"sampling tokens/s ours ÷ transformers, batch {bs}, {mode}", t_theirs / t_ours, 1.0, True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    main(**vars(ap.parse_args()))
