"""Step time of alignbook's reward-model loop divided by TRL's RewardTrainer, measured in the same run.

Same model (SmolLM2-135M-Instruct with a one-output head, CPU), same trainable parameters (top 2 layers + head), same
HH-RLHF pairs (<= 128 tokens), batch 8 pairs, same order and optimizer. Ours trains on features cached once from the
frozen layers; TRL runs the whole model every step. The one-time caching cost is reported too, and amortised over one
epoch of the timed pairs. Target: step-time ratio <= 1.0.
Run: python benchmarks/reward.py [--steps 8] [--warmup 2]
"""

import argparse
import time
import warnings

from datasets import Dataset
from transformers import PrinterCallback, TrainerCallback
from trl import RewardConfig, RewardTrainer
from verdict import verdict

from alignbook.data import load_hh_rlhf
from alignbook.reward import RewardSettings, cache_features, load_reward_model, tokenize_pairs, train_reward
from alignbook.sft import freeze_all_but, top_layers

TRAINED_LAYERS, BATCH = 2, 8


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self.t = [], None

    def on_step_begin(self, args, state, control, **kw):
        self.t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self.t)


def main(steps=8, warmup=2):
    warnings.filterwarnings("ignore")
    n = (steps + warmup) * BATCH
    rows = list(load_hh_rlhf("helpful-base"))[:600]
    model, tok = load_reward_model()
    pairs = tokenize_pairs(rows, tok, max_length=128)[:n]
    kept = {tuple(p["chosen_ids"]) for p in pairs}
    trl_rows = [r for r in rows if tuple(tok(r["prompt"] + r["chosen"] + tok.eos_token)["input_ids"]) in kept][:n]
    assert len(pairs) == len(trl_rows) == n

    freeze_all_but(model, top_layers(model, TRAINED_LAYERS) + ["score."])
    t = time.perf_counter()
    feats = cache_features(model, pairs, TRAINED_LAYERS, tok.pad_token_id)
    t_cache = time.perf_counter() - t
    train_reward(model, feats[: warmup * BATCH], RewardSettings(steps=warmup, seed=None, trained_layers=TRAINED_LAYERS))
    t = time.perf_counter()
    train_reward(model, feats[warmup * BATCH :], RewardSettings(steps=steps, seed=None, trained_layers=TRAINED_LAYERS))
    ours = (time.perf_counter() - t) / steps

    model, _ = load_reward_model()
    freeze_all_but(model, top_layers(model, TRAINED_LAYERS) + ["score."])
    args = RewardConfig(
        output_dir="/tmp/alignbook_bench_rm",
        report_to=[],
        use_cpu=True,
        bf16=False,
        max_length=128,
        per_device_train_batch_size=BATCH,
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
    timer = StepTimer()
    trainer = RewardTrainer(
        model, args=args, processing_class=tok, train_dataset=Dataset.from_list(trl_rows), callbacks=[timer]
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    theirs = sum(timer.times[warmup:]) / steps

    cache_per_step = t_cache / (n / BATCH)
    print(f"batch {BATCH} pairs, {steps} timed steps, top {TRAINED_LAYERS} layers + head trainable")
    print(
        f"ours: {ours:.2f} s/step (+ {cache_per_step:.2f} s/step of one-time feature caching, amortised over one epoch)"
    )
    print(f"TRL RewardTrainer: {theirs:.2f} s/step")
    verdict("reward step ours ÷ TRL", ours / theirs, 1.0)
    verdict("reward step ours ÷ TRL, caching included (one epoch)", (ours + cache_per_step) / theirs, 1.0)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    main(**vars(ap.parse_args()))
