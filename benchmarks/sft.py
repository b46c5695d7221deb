"""Step time of alignbook's SFT loop divided by TRL's SFTTrainer, and tokens/s, measured in the same run.

Same model (SmolLM2-135M-Instruct, CPU, top 4 layers trainable), same Alpaca rows (Alpaca template, at most --max-length
tokens), same batch size, same order (TRL with train_sampling_strategy="sequential"), same optimizer (AdamW, constant
lr,
grad clip 1.0). Each side runs --steps steps after --warmup steps of warm-up. Target: ratio <= 1.0.
Run: python benchmarks/sft.py [--steps 10] [--warmup 2] [--batch-size 8] [--max-length 128]
"""

import argparse
import time
import warnings

from datasets import Dataset
from transformers import PrinterCallback, TrainerCallback
from trl import SFTConfig, SFTTrainer

from alignbook.data import load_instructions
from alignbook.models import load_model, load_tokenizer
from alignbook.sft import SFTSettings, freeze_all_but, prepare_sft, render, top_layers, train_sft


class StepTimer(TrainerCallback):
    "Wall time of each optimizer step inside Trainer.train()."

    def __init__(self):
        self.times, self.t = [], None

    def on_step_begin(self, args, state, control, **kw):
        self.t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self.t)


def main(steps=10, warmup=2, batch_size=8, max_length=128):
    warnings.filterwarnings("ignore")
    tok = load_tokenizer()
    raw = [r for r in load_instructions("alpaca-cleaned").select(range(600))]
    rows = prepare_sft(raw, tok, "alpaca", max_length=max_length)
    kept_texts = {tuple(r["input_ids"]) for r in rows}
    trl_rows = [render(r, "alpaca") for r in raw]  # for TRL: the same rows prepare_sft kept, in the same order
    trl_rows = [
        r for r in trl_rows if tuple(tok(r["prompt"] + r["completion"] + tok.eos_token)["input_ids"]) in kept_texts
    ]
    n = steps + warmup
    rows, trl_rows = rows[: n * batch_size], trl_rows[: n * batch_size]
    assert len(rows) == len(trl_rows) == n * batch_size
    tokens = sum(len(r["input_ids"]) for r in rows[warmup * batch_size :])

    model = load_model(device="cpu")
    freeze_all_but(model, top_layers(model, 4))
    train_sft(
        model,
        rows[: warmup * batch_size],
        SFTSettings(steps=warmup, batch_size=batch_size, eval_every=0, seed=None),
        tok,
    )
    t = time.perf_counter()
    train_sft(
        model,
        rows[warmup * batch_size :],
        SFTSettings(steps=steps, batch_size=batch_size, eval_every=0, seed=None),
        tok,
    )
    ours = (time.perf_counter() - t) / steps

    model = load_model(device="cpu")
    freeze_all_but(model, top_layers(model, 4))
    args = SFTConfig(
        output_dir="/tmp/alignbook_bench_sft",
        report_to=[],
        use_cpu=True,
        bf16=False,
        max_length=None,
        completion_only_loss=True,
        per_device_train_batch_size=batch_size,
        max_steps=n,
        learning_rate=1e-4,
        lr_scheduler_type="constant",
        optim="adamw_torch",
        weight_decay=0.0,
        max_grad_norm=1.0,
        train_sampling_strategy="sequential",
        logging_steps=10**6,
        save_strategy="no",
        activation_checkpointing=False,
        disable_tqdm=True,
    )
    timer = StepTimer()
    trainer = SFTTrainer(
        model, args=args, processing_class=tok, train_dataset=Dataset.from_list(trl_rows), callbacks=[timer]
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    theirs = sum(timer.times[warmup:]) / steps

    print(f"rows of <= {max_length} tokens, batch {batch_size}, {steps} timed steps, top 4 layers trainable")
    print(
        f"ours: {ours:.2f} s/step ({tokens / steps / ours:.0f} tokens/s)   TRL SFTTrainer: {theirs:.2f} s/step "
        f"({tokens / steps / theirs:.0f} tokens/s)   step-time ratio ours/TRL: {ours / theirs:.2f}"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    main(**vars(ap.parse_args()))
