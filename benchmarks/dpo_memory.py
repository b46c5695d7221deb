"""The largest allocations of one DPO training step (TRL's work: the whole model runs, the reference every step),
before and after `completion_logps` projected the vocabulary only at completion positions, measured in one run with
`torch.profiler`'s memory view on CPU (each operator call's own allocation; the largest is the step's largest tensor).

"Before" is the earlier `completion_logps` (chapter 1's `sequence_logprobs`: logits at every position), put back in
place for the measurement; "after" is alignbook's. Same model (SmolLM2-135M-Instruct), the same 8 synthetic pairs as
benchmarks/dpo.py, LoRA r=8 on q/v of layers 26-29, float32. Target: after ÷ before <= 0.5 for the largest tensor.
Run: python benchmarks/dpo_memory.py
"""

import warnings

import torch
from dpo import BATCH, TARGETS, rows
from torch.profiler import ProfilerActivity, profile
from verdict import verdict

import alignbook.dpo as dpo
from alignbook.distributions import sequence_logprobs
from alignbook.lora import inject_lora
from alignbook.models import load_model, load_tokenizer

warnings.filterwarnings("ignore")


def every_position(model, batch):
    "The earlier completion_logps: the logits of every position, then the completion's."
    _, summed = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    return summed.chunk(2)


def largest(fn) -> list[tuple[str, float]]:
    "The three largest single allocations (operator, MiB) of one training step with `fn` as completion_logps."
    tok = load_tokenizer()
    tok.pad_token = "<|endoftext|>"
    torch.manual_seed(0)
    policy = inject_lora(load_model(device="cpu"), TARGETS, r=8, alpha=16, seed=0)
    data = dpo.tokenize_preferences(rows()[:BATCH], tok)
    dpo.completion_logps = fn
    cfg = dpo.DPOSettings(steps=1, batch_size=BATCH, lr=1e-4, shared_trunk=False)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        dpo.train_dpo(policy, data, cfg, tok)
    events = sorted(prof.events(), key=lambda e: e.cpu_memory_usage, reverse=True)
    return [(e.name, e.cpu_memory_usage / 2**20) for e in events[:3]]


def main():
    ours = dpo.completion_logps
    before, after = largest(every_position), largest(ours)
    batch = dpo.collate_preferences(dpo.tokenize_preferences(rows()[:BATCH], load_tokenizer()), 0)
    shape, scored = tuple(batch["input_ids"].shape), int((batch["completion_mask"][:, 1:]).sum())
    print(f"one DPO step, {BATCH} pairs: input {shape} tokens, {scored} completion tokens scored, float32, CPU")
    for name, top in [("before (logits at every position)", before), ("after (at completion positions)", after)]:
        print(f"{name:36s} " + "; ".join(f"{op} {mib:.1f} MiB" for op, mib in top))
    verdict("DPO step largest tensor after ÷ before", after[0][1] / before[0][1], 0.5)


if __name__ == "__main__":
    main()
