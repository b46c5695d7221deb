"""Step time of alignbook's SFT loop divided by TRL's SFTTrainer, and tokens/s, measured in one run.

Same model (SmolLM2-135M-Instruct, CPU, top 4 layers trainable), same Alpaca rows (Alpaca template, at most --max-length
tokens), same batch size, same order (TRL with train_sampling_strategy="sequential"), same optimizer (AdamW, constant
lr, grad clip 1.0). Contestants, each in its own process, in the order A B C A B C (against drift): TRL's SFTTrainer;
ours on the tokens (the whole model runs forward, the vocabulary is projected only at labelled positions); ours on rows
whose frozen trunk (layers 0-25) was run once by `cache_trunk`, as chapter 3 trains. Each runs --steps steps after
--warmup steps of warm-up; the median step time of each is averaged over its two runs. The cached trunk's one pass is
reported on its own, and per step of one epoch (each row seen once: the worst case for a cache; chapter 3 reads each
row three times, in six runs).
Targets: ours ÷ TRL <= 1.0 (the same work); ours on the cached trunk ÷ TRL <= 0.5, its pass included (one epoch).
Run: python benchmarks/sft.py [--steps 10] [--warmup 2] [--batch-size 8] [--max-length 128]
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
import warnings

from verdict import verdict

CONTESTANTS = ("TRL SFTTrainer", "ours", "ours, cached trunk")


def data(tok, n, max_length):
    "n Alpaca rows that prepare_sft keeps, tokenized for us and rendered for TRL, in the same order."
    from alignbook.data import load_instructions
    from alignbook.sft import prepare_sft, render

    raw = [r for r in load_instructions("alpaca-cleaned").select(range(8 * n))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = prepare_sft(raw, tok, "alpaca", max_length=max_length)
    kept = {tuple(r["input_ids"]) for r in rows}
    trl_rows = [render(r, "alpaca") for r in raw]
    trl_rows = [r for r in trl_rows if tuple(tok(r["prompt"] + r["completion"] + tok.eos_token)["input_ids"]) in kept]
    rows, trl_rows = rows[:n], trl_rows[:n]
    assert len(rows) == len(trl_rows) == n
    return rows, trl_rows


def child(name, steps, warmup, batch_size, max_length):
    "One contestant: the median seconds of its timed steps, and the seconds of its one trunk pass (if any)."
    from alignbook.models import load_model, load_tokenizer
    from alignbook.sft import SFTSettings, cache_trunk, freeze_all_but, top_layers, train_sft

    warnings.filterwarnings("ignore")
    tok = load_tokenizer()
    n = (steps + warmup) * batch_size
    rows, trl_rows = data(tok, n, max_length)
    model = load_model(device="cpu")
    freeze_all_but(model, top_layers(model, 4))
    times, once = [], 0.0
    if name == "TRL SFTTrainer":
        from datasets import Dataset
        from transformers import PrinterCallback, TrainerCallback
        from trl import SFTConfig, SFTTrainer

        class StepTimer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                self.t = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                times.append(time.perf_counter() - self.t)

        args = SFTConfig(
            output_dir="/tmp/alignbook_bench_sft",
            report_to=[],
            use_cpu=True,
            bf16=False,
            max_length=None,
            completion_only_loss=True,
            per_device_train_batch_size=batch_size,
            max_steps=steps + warmup,
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
        trainer = SFTTrainer(
            model, args=args, processing_class=tok, train_dataset=Dataset.from_list(trl_rows), callbacks=[StepTimer()]
        )
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    else:
        if name == "ours, cached trunk":
            t0 = time.perf_counter()
            rows = cache_trunk(model, rows, 4)
            once = time.perf_counter() - t0
        history = train_sft(model, rows, SFTSettings(steps=steps + warmup, batch_size=batch_size, seed=None), tok)
        seen = [0] + [h["num_tokens"] for h in history]  # a step's seconds: its tokens ÷ its tokens per second
        times = [(b - a) / h["tokens_per_second"] for a, b, h in zip(seen, seen[1:], history)]
    tokens = sum(len(r["input_ids"]) for r in rows[warmup * batch_size :])
    print(json.dumps(dict(step=statistics.median(times[warmup:]), once=once, tokens=tokens)))


def main(args):
    results = {name: [] for name in CONTESTANTS}
    for _ in range(2):  # A B C A B C
        for name in CONTESTANTS:
            cmd = [sys.executable, __file__, "--child", name, "--steps", str(args.steps), "--warmup", str(args.warmup)]
            cmd += ["--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    mean = {name: {k: statistics.mean(r[k] for r in rs) for k in rs[0]} for name, rs in results.items()}
    trl = mean["TRL SFTTrainer"]["step"]
    print(
        f"SFT step, batch {args.batch_size} rows of <= {args.max_length} tokens, top 4 of 30 layers trainable, "
        f"{args.steps} timed steps after {args.warmup}, CPU"
    )
    for name, m in mean.items():
        runs = ", ".join(f"{r['step']:.3f}" for r in results[name])
        extra = ""
        if m["once"]:
            per = m["once"] / (args.steps + args.warmup)
            extra = f"; trunk pass once {m['once']:.2f} s ({per:.3f} s per step of one epoch)"
        print(
            f"{name:20s} {m['step']:.3f} s/step (runs: {runs}), {m['tokens'] / args.steps / m['step']:.0f} tokens/s, "
            f"÷ TRL {m['step'] / trl:.2f}{extra}"
        )
    cached = mean["ours, cached trunk"]
    verdict("SFT ours ÷ TRL", mean["ours"]["step"] / trl, 1.0)
    verdict("SFT cached trunk ÷ TRL, step only", cached["step"] / trl, 0.5)
    verdict(
        "SFT cached trunk ÷ TRL, its pass included",
        (cached["step"] + cached["once"] / (args.steps + args.warmup)) / trl,
        0.5,
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--child", choices=CONTESTANTS)
    a = ap.parse_args()
    if a.child is None:
        main(a)
    else:
        child(a.child, a.steps, a.warmup, a.batch_size, a.max_length)
