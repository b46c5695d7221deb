"""One PPO iteration on SmolLM2-135M-Instruct (CPU), ours ÷ TRL 1.9.0's `trl.experimental.ppo.PPOTrainer`, in one run.

Same rollouts for every contestant: 16 responses of up to 32 tokens, sampled once by our sampler and replayed
(generation is
timed on its own). Same settings: LoRA r=8 on q/v of layers 26-29 of the policy, 4 PPO epochs × 2 minibatches, AdamW,
the course reward model as reward model, a value model initialised from it and fully trained (TRL's layout).
Contestants: TRL 1.9 (PEFT LoRA, the reference is the policy with its adapter disabled); ours in TRL's layout; ours
with a
value head and the shared frozen trunk (the course's setting). Prints seconds per iteration, the ratios, and the share
of
a whole step (sampling included) that sampling takes.
Run: PYTHONPATH=.trl19 python benchmarks/ppo.py [--rows 16] [--new-tokens 32]   (TRL 1.9.0 in .trl19/, see .ci/run)
"""

import argparse
import copy
import os
import tempfile
import time
import warnings

import torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
warnings.filterwarnings("ignore")

from verdict import verdict

from alignbook.lora import inject_lora  # noqa: E402
from alignbook.models import load_model, load_tokenizer  # noqa: E402
from alignbook.ppo import PPOSettings, train_ppo  # noqa: E402
from alignbook.reward import course_reward_model  # noqa: E402
from alignbook.sampling import generate  # noqa: E402

LAYERS = range(26, 30)
TARGETS = [f"layers.{i}.self_attn.{p}" for i in LAYERS for p in ["q_proj", "v_proj"]]
QUESTION = "Give me one tip for sleeping better."


def settings(rows, new_tokens, **kw):
    return PPOSettings(
        steps=1,
        prompts_per_step=rows,
        samples_per_prompt=1,
        max_new_tokens=new_tokens,
        lr=1e-4,
        kl_coef=0.05,
        ppo_epochs=4,
        num_minibatches=2,
        max_grad_norm=None,
        temperature=1.0,
        **kw,
    )


def ours(tok, prompt, responses, rm, rows, new_tokens, layout):
    ref = load_model(device="cpu").requires_grad_(False)
    policy = inject_lora(load_model(device="cpu"), TARGETS, r=8, alpha=16)
    value = None
    if layout == "trl":
        value = copy.deepcopy(rm).requires_grad_(True)

    def replay(model, input_ids, attention_mask, num_return_sequences=1, **kw):
        return torch.cat([input_ids.repeat_interleave(num_return_sequences, 0), responses], 1)

    t = time.perf_counter()
    train_ppo(
        policy,
        [prompt],
        settings(rows, new_tokens, score_after_eos=layout == "trl", shared_trunk=layout != "trl"),
        tok,
        ref=ref,
        reward_model=rm,
        value_model=value,
        sample_fn=replay,
    )
    return time.perf_counter() - t


def trl(tok, prompt, responses, rm, rows, new_tokens, tmp):
    import numpy as np  # noqa: F401
    from datasets import Dataset
    from peft import LoraConfig
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as module

    policy = load_model(device="cpu")
    value = copy.deepcopy(rm).requires_grad_(True)
    ids = tok(prompt)["input_ids"]
    qr = torch.cat([torch.tensor([ids] * rows), responses], 1)
    with torch.no_grad():  # the logits generation would have returned (adapters start at zero: the base model's)
        logits = module.forward(policy, qr, tok.pad_token_id).logits[:, len(ids) - 1 : -1].clone()
    module.batch_generation = lambda model, queries, *a: (qr, logits)
    args = PPOConfig(
        output_dir=tmp,
        per_device_train_batch_size=rows,
        gradient_accumulation_steps=1,
        num_mini_batches=2,
        num_ppo_epochs=4,
        total_episodes=rows,
        learning_rate=1e-4,
        response_length=new_tokens,
        temperature=1.0,
        stop_token="eos",
        kl_coef=0.05,
        use_cpu=True,
        bf16=False,
        report_to=[],
        seed=0,
        num_sample_generations=0,
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
    )
    peft = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], layers_to_transform=list(LAYERS)
    )
    ds = Dataset.from_dict({"input_ids": [ids] * rows})
    trainer = PPOTrainer(
        args=args,
        processing_class=tok,
        model=policy,
        ref_model=None,
        reward_model=rm,
        train_dataset=ds,
        value_model=value,
        eval_dataset=ds,
        peft_config=peft,
    )
    t = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t


def main(rows, new_tokens):
    torch.manual_seed(0)
    rm, _, _ = course_reward_model()
    rm.requires_grad_(False)
    tok = load_tokenizer(padding_side="left")
    tok.pad_token = "<|endoftext|>"
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, tokenize=False
    )
    policy = inject_lora(load_model(device="cpu"), TARGETS, r=8, alpha=16)
    enc = tok([prompt], return_tensors="pt")
    t = time.perf_counter()
    seqs = generate(
        policy,
        **enc,
        do_sample=True,
        top_k=0,
        max_new_tokens=new_tokens,
        num_return_sequences=rows,
        generator=torch.Generator().manual_seed(0),
    )
    t_gen = time.perf_counter() - t
    responses = seqs[:, enc["input_ids"].shape[1] :]
    if responses.shape[1] < new_tokens:  # every response ended early: pad to the full width, as TRL's replay expects
        responses = torch.cat([responses, torch.full((rows, new_tokens - responses.shape[1]), tok.pad_token_id)], 1)
    responses = torch.where(responses == tok.pad_token_id, tok.eos_token_id, responses)
    with tempfile.TemporaryDirectory() as tmp:
        times = {
            "TRL 1.9 PPOTrainer": trl(tok, prompt, responses, rm, rows, new_tokens, tmp),
            "ours, TRL's layout (value model)": ours(tok, prompt, responses, rm, rows, new_tokens, "trl"),
            "ours, value head + shared trunk": ours(tok, prompt, responses, rm, rows, new_tokens, "head"),
        }
    base = times["TRL 1.9 PPOTrainer"]
    print(
        f"one PPO iteration, {rows} rollouts of <= {new_tokens} tokens, 4 epochs x 2 minibatches (generation excluded):"
    )
    for k, v in times.items():
        print(f"  {k:34s} {v:6.2f} s   ÷ TRL = {v / base:.2f}")
    it = times["ours, value head + shared trunk"]
    verdict("PPO iteration ours (value head, shared trunk) ÷ TRL", it / base, 0.5)
    print(
        f"sampling the {rows} responses took {t_gen:.2f} s: {t_gen / (t_gen + it):.0%} of a whole step of ours "
        f"(value head + shared trunk), {t_gen / (t_gen + base):.0%} of TRL's"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    a = ap.parse_args()
    main(a.rows, a.new_tokens)
