"""One DPO training step, ours ÷ TRL 1.16's `DPOTrainer`, same model, data, batch and LoRA, measured in one run.

Model: SmolLM2-135M-Instruct (the offline default), or with `--config DIR` its architecture with random weights (the
same
arithmetic, for a machine without the converted weights: DIR holds config.json and the tokenizer). Data: 64 synthetic
text
preference pairs (prompts of 40-80 words, completions of 10-40). Settings: batch 8 pairs, AdamW, LoRA r=8 on q/v of
layers 26-29 (the course's setting), the reference being the policy with its adapters off.
Contestants, each in its own process, in the order A B C A B C: TRL (PEFT LoRA, the reference computed every step);
ours doing TRL's work (no shared trunk, the reference every step); ours as the course runs it (shared frozen trunk,
reference log-probs precomputed once: that pass is reported on its own and per step of one epoch).
Prints the median seconds of an optimizer step (after a warm-up step), the peak memory of training, the ratios, and
PASS/FAIL against the targets: step time ours ÷ TRL <= 0.5 (the course's setting), <= 1.0 at the least (TRL's work).
Peak memory of the training steps: CUDA's max_memory_allocated, or on CPU the peak resident set size, counted from after
the model is loaded (and, for the course setting, after the reference pass).
Run: python benchmarks/dpo.py [--device cuda] [--bf16] [--steps 6] [--config DIR]
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from verdict import verdict

warnings.filterwarnings("ignore")
TARGETS = [f"layers.{i}.self_attn.{p}" for i in range(26, 30) for p in ["q_proj", "v_proj"]]
WORDS = (
    "the a of to and in is it you that he was for on are with as his they be at one have this from or had by hot word "
    "but what some we can out other were all there when up use your how said an each she which do their time if will "
    "way about many then them write would like so these her long make thing see him two has look more day could go"
).split()
PAIRS, BATCH = 64, 8


def rows():
    g = torch.Generator().manual_seed(0)

    def text(lo, hi):
        return " ".join(
            WORDS[i]
            for i in torch.randint(0, len(WORDS), (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g)
        )

    return [
        dict(prompt=text(40, 80) + "?", chosen=" " + text(10, 40), rejected=" " + text(10, 40)) for _ in range(PAIRS)
    ]


def load(args):
    from alignbook.models import load_model, load_tokenizer

    if args.config is None:
        return load_model(device=args.device), load_tokenizer()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.config), dtype=torch.float32).to(
        args.device
    )
    return model, AutoTokenizer.from_pretrained(args.config)


def peak_reset(device):
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return
    Path("/proc/self/clear_refs").write_text(
        "5"
    )  # reset the peak-RSS counter: loading the model peaks higher than training


def peak_mib(device) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return (
        next(int(x.split()[1]) for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM"))
        / 1024
    )


def run_trl(args):
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    model, tok = load(args)
    tok.pad_token = tok.pad_token or "<|endoftext|>"
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0))
    times = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            if args.device == "cuda":
                torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            if args.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)

    with tempfile.TemporaryDirectory() as out:
        trainer = DPOTrainer(
            model=peft_model,
            processing_class=tok,
            train_dataset=Dataset.from_list(rows()),
            args=DPOConfig(
                output_dir=out,
                per_device_train_batch_size=BATCH,
                max_steps=args.steps + 1,
                report_to=[],
                use_cpu=args.device == "cpu",
                bf16=args.bf16,
                save_strategy="no",
                logging_steps=1000,
                learning_rate=1e-4,
                disable_tqdm=True,
                dataloader_num_workers=0,
            ),
            callbacks=[Clock()],
        )
        peak_reset(args.device)
        trainer.train()
    return dict(step=statistics.median(times[1:]), peak=peak_mib(args.device), once=0.0)


def run_ours(args, course: bool):
    from alignbook.dpo import DPOSettings, precompute_reference, tokenize_preferences, train_dpo
    from alignbook.lora import inject_lora

    model, tok = load(args)
    tok.pad_token = tok.pad_token or "<|endoftext|>"
    policy = inject_lora(model, TARGETS, r=8, alpha=16)
    data = tokenize_preferences(rows(), tok)
    once = 0.0
    if course:
        t0 = time.perf_counter()
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.bf16):
            data = precompute_reference(policy, data, tok.pad_token_id, batch_size=2 * BATCH)
        if args.device == "cuda":
            torch.cuda.synchronize()
        once = time.perf_counter() - t0
    peak_reset(args.device)  # the peak of training steps, as for TRL (the reference pass is done)
    cfg = DPOSettings(steps=args.steps + 1, batch_size=BATCH, lr=1e-4, bf16=args.bf16, shared_trunk=course)
    times = []
    import alignbook.dpo as dpo

    step_fn = dpo.optimizer_step

    def timed_step(*a, **k):  # the same span as TRL's callback: from a step's batch to after the optimizer
        out = step_fn(*a, **k)
        if args.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter())
        return out

    dpo.optimizer_step = timed_step
    start = time.perf_counter()
    train_dpo(policy, data, cfg, tok)
    steps = [b - a for a, b in zip([start] + times[:-1], times)]
    return dict(step=statistics.median(steps[1:]), peak=peak_mib(args.device), once=once)


def main(args):
    results = {"TRL": [], "ours, TRL's work": [], "ours, course setting": []}
    for _ in range(2):  # A B C A B C, against drift
        for name in results:
            cmd = [sys.executable, __file__, "--child", name, "--device", args.device, "--steps", str(args.steps)]
            if args.bf16:
                cmd.append("--bf16")
            if args.config:
                cmd += ["--config", args.config]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"DPO step, batch {BATCH} pairs, LoRA r=8 on q/v of layers 26-29, "
        f"{'bf16 autocast' if args.bf16 else 'float32'}, {device}"
    )
    trl = {k: statistics.mean(r[k] for r in results["TRL"]) for k in ("step", "peak")}
    for name, rs in results.items():
        step, peak, once = (statistics.mean(r[k] for r in rs) for k in ("step", "peak", "once"))
        extra = (
            f", reference pass once {once:.2f} s ({once / (PAIRS / BATCH):.3f} s per step of one epoch)" if once else ""
        )
        runs = ", ".join(f"{r['step']:.3f}" for r in rs)
        print(
            f"{name:22s} {step:.3f} s/step (runs: {runs}), peak {peak:.0f} MiB; "
            f"÷ TRL: time {step / trl['step']:.2f}, memory {peak / trl['peak']:.2f}{extra}"
        )
    ratio = lambda name: statistics.mean(r["step"] for r in results[name]) / trl["step"]
    for name, target in [("ours, course setting", 0.5), ("ours, TRL's work", 1.0)]:
        verdict(f"DPO step {name} ÷ TRL", ratio(name), target)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--config", default=None)
    ap.add_argument("--child", default=None)
    a = ap.parse_args()
    if a.child is None:
        main(a)
    else:
        r = run_trl(a) if a.child == "TRL" else run_ours(a, course=a.child == "ours, course setting")
        print(json.dumps(r))
