"""One GRPO step on SmolLM2-135M-Instruct (CPU), ours ÷ TRL 1.16's GRPOTrainer, on the same sampled answers.

Both train LoRA r=8 on q/v of the top 4 layers (ours: `inject_lora`; TRL: a PEFT `LoraConfig` on the same modules),
from the same batch of 8 arithmetic problems × 8 answers of up to 12 tokens, sampled once and handed to both (their
generation replaced, as in tests/test_trl_grpo.py), so the timed span is the same: rewards, advantages, the forward and
backward passes and the optimizer step. Contestants alternate A B A B in one run; each reports its median step time
(the first step of each run is left out as warm-up). Then the share of one of our steps spent generating, with
sampling on. PASS when ours ÷ TRL ≤ 0.5.
Run: python benchmarks/grpo.py [--rounds 2] [--steps 4]
"""

import argparse
import statistics
import time

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import PrinterCallback
from trl import GRPOConfig, GRPOTrainer
from verdict import verdict

from alignbook.gold import bench_tokenizer
from alignbook.grpo import (
    GRPOSettings,
    arithmetic_problems,
    bench_grpo_policy,
    correctness_reward,
    prompt_texts,
    train_grpo,
)
from alignbook.models import default_model_dir, load_model
from alignbook.sampling import generate

PROMPTS, GROUP, NEW, TARGET = 8, 8, 12, 0.5


def sample_batch(tok, rows):
    "Answers of the base model to each prompt, GROUP each: the completions both contestants get, per prompt text."
    model = load_model(device="cpu").eval()
    tok.padding_side = "left"
    enc = tok(prompt_texts(rows, tok), return_tensors="pt", padding=True)
    g = torch.Generator().manual_seed(0)
    out = generate(
        model,
        **enc,
        do_sample=True,
        top_k=0,
        max_new_tokens=NEW,
        num_return_sequences=GROUP,
        generator=g,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )[:, enc["input_ids"].shape[1] :]
    answers = {}
    for i, r in enumerate(rows):
        ids = []
        for row in out[i * GROUP : (i + 1) * GROUP].tolist():
            cut = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
            ids.append(row[:cut])
        answers[r["prompt"]] = ids
    return answers


def ours(tok, rows, answers, steps):
    texts = {tuple(tok(r["prompt"])["input_ids"]): r["prompt"] for r in rows}

    def fixed(model, input_ids, attention_mask, num_return_sequences, **kw):
        out = []
        for prompt in input_ids.tolist():
            key = tuple(t for t in prompt if t != tok.pad_token_id)
            out += [a + [tok.eos_token_id] * (NEW - len(a)) for a in answers[texts[key]]]
        return torch.cat([input_ids.repeat_interleave(num_return_sequences, 0), torch.tensor(out)], 1)

    cfg = GRPOSettings(steps=steps, prompts_per_step=PROMPTS, num_generations=GROUP, max_new_tokens=NEW, lr=2e-3)
    history = train_grpo(bench_grpo_policy(), rows, cfg, tok, correctness_reward, sample_fn=fixed)
    return [h["num_tokens"] / max(1, i + 1) / h["tokens_per_second"] for i, h in enumerate(history)]


def theirs(tok, rows, answers, steps, tmp):
    n = load_model(device="cpu").config.num_hidden_layers
    layers = "|".join(str(i) for i in range(n - 4, n))
    lora = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules=rf".*layers\.({layers})\.self_attn\.(q_proj|v_proj)"
    )
    args = GRPOConfig(
        output_dir=tmp,
        per_device_train_batch_size=PROMPTS * GROUP,
        num_generations=GROUP,
        max_completion_length=NEW,
        learning_rate=2e-3,
        lr_scheduler_type="constant",
        max_steps=steps,
        use_cpu=True,
        bf16=False,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        seed=0,
    )
    trainer = GRPOTrainer(
        model=str(default_model_dir()),
        reward_funcs=correctness_reward,
        args=args,
        processing_class=tok,
        train_dataset=Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows]),
        peft_config=lora,
    )
    trainer.remove_callback(PrinterCallback)
    by_ids = {tuple(tok(p)["input_ids"]): p for p in answers}

    def fixed(ids, images, multimodal_fields, num_generations, has_tool_images=False):
        handed, out = {}, []
        for row in ids:
            p = by_ids[tuple(row)]
            out.append(answers[p][handed.get(p, 0) % GROUP])
            handed[p] = handed.get(p, 0) + 1
        return out, None

    trainer._generate_single_turn = fixed
    trainer.train()
    return [h["step_time"] for h in trainer.state.log_history if "step_time" in h]


def main(rounds, steps):
    torch.manual_seed(0)
    tok = bench_tokenizer()
    rows = arithmetic_problems("train")[:PROMPTS]
    answers = sample_batch(tok, rows)
    times = {"ours": [], "TRL": []}
    for r in range(rounds):  # A B A B
        times["TRL"] += theirs(tok, rows, answers, steps, f"/tmp/grpo_bench_{r}")[1:]
        times["ours"] += ours(tok, rows, answers, steps)[1:]
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["ours"] / med["TRL"]
    print(f"one GRPO step, {PROMPTS} prompts × {GROUP} answers ≤ {NEW} tokens, LoRA r=8 on q/v of the top 4 layers:")
    print(f"  ours {med['ours']:.2f} s, TRL {med['TRL']:.2f} s (medians of {len(times['ours'])} steps each)")
    verdict("GRPO step ours ÷ TRL", ratio, TARGET)
    cfg = GRPOSettings(steps=2, prompts_per_step=PROMPTS, num_generations=GROUP, max_new_tokens=NEW, lr=2e-3)
    t = time.perf_counter()
    h = train_grpo(bench_grpo_policy(), rows, cfg, tok, correctness_reward)
    total = time.perf_counter() - t
    share = sum(x["generation_seconds"] for x in h) / total
    print(f"  with sampling on: {total / 2:.2f} s a step, of which generating {share:.0%}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    a = ap.parse_args()
    main(a.rounds, a.steps)
