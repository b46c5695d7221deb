"""LoRA benchmarks, measured in one run: (1) forward+backward step time of alignbook's LoRA divided by PEFT's, same
model
(SmolLM2-135M-Instruct, CPU) and targets (q/k/v/o of all 30 layers, r=8); (2) peak memory of a LoRA training step
divided
by a full fine-tuning step (AdamW), each in a fresh subprocess (peak resident set size during training, the counter
reset
after the model is loaded; Linux). Targets: time ratio <= 1.0,
memory ratio <= 0.6.
Run: python benchmarks/lora.py [--steps 5] [--batch 4] [--length 128]
"""

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from verdict import verdict

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


def batch(n, length):
    ids = torch.randint(3, 49152, (n, length), generator=torch.Generator().manual_seed(0))
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)


def step_time(model, b, steps):
    "Median seconds of forward + backward (after one warm-up)."
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        model(**b).loss.backward()
        times.append(time.perf_counter() - t)
        model.zero_grad(set_to_none=True)
    return statistics.median(times[1:])


def child(mode, n, length):
    "One AdamW training step (full or LoRA) in this process; prints the peak RSS in MiB."
    from alignbook.lora import inject_lora
    from alignbook.models import load_model

    model = load_model(device="cpu")
    if mode == "lora":
        inject_lora(model, ATTENTION, r=8, alpha=16)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    b = batch(n, length)
    gc.collect()
    Path("/proc/self/clear_refs").write_text(
        "5"
    )  # reset the peak-RSS counter: loading the model peaks higher than training
    for _ in range(2):
        model(**b).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    hwm = next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM"))
    print(json.dumps(dict(peak_mib=hwm / 1024)))


def main(steps=5, batch_size=4, length=128):
    from peft import LoraConfig, get_peft_model

    from alignbook.lora import inject_lora
    from alignbook.models import load_model

    b = batch(batch_size, length)
    ours = inject_lora(load_model(device="cpu"), ATTENTION, r=8, alpha=16).train()
    theirs = get_peft_model(load_model(device="cpu"), LoraConfig(r=8, lora_alpha=16, target_modules=ATTENTION)).train()
    t_theirs, t_ours = step_time(theirs, b, steps), step_time(ours, b, steps)
    t_ours2, t_theirs2 = step_time(ours, b, steps), step_time(theirs, b, steps)  # both orders, against drift
    t_ours, t_theirs = (t_ours + t_ours2) / 2, (t_theirs + t_theirs2) / 2
    print(f"forward+backward, batch {batch_size} x {length} tokens, LoRA r=8 on q/k/v/o of 30 layers")
    print(f"ours {t_ours:.2f} s, PEFT {t_theirs:.2f} s, ratio ours/PEFT {t_ours / t_theirs:.2f}")
    verdict("LoRA step ours ÷ PEFT", t_ours / t_theirs, 1.0)
    for n, l in [(batch_size, length), (1, 64)]:  # activations dominate the first, optimizer state the second
        peak = {}
        for mode in ["full", "lora"]:
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, "--batch", str(n), "--length", str(l)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            peak[mode] = json.loads(out.strip().splitlines()[-1])["peak_mib"]
        print(
            f"peak memory of a training step (AdamW), batch {n} x {l}: full fine-tuning {peak['full']:.0f} MiB, "
            f"LoRA {peak['lora']:.0f} MiB, ratio LoRA/full {peak['lora'] / peak['full']:.2f}"
        )
        verdict(f"LoRA peak memory ÷ full fine-tuning, batch {n} x {l}", peak["lora"] / peak["full"], 0.6)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--child", choices=["full", "lora"])
    a = ap.parse_args()
    if a.child:
        child(a.child, a.batch, a.length)
    else:
        main(a.steps, a.batch, a.length)
