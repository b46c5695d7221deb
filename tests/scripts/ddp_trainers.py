"""Run SFT, reward, REINFORCE, PPO and DPO training on the tiny model, in one process or under torchrun, and save what
came out.

python tests/scripts/ddp_trainers.py OUT BATCH        one process, BATCH rows per step
torchrun --nproc_per_node 2 tests/scripts/ddp_trainers.py OUT BATCH   two processes, BATCH rows each
Writes OUT/{sft,reward,features,dpo,grpo}_history.json and _weights.pt from the main process, OUT/reinforce_rank{R}.pt,
OUT/ppo_rank{R}.pt and OUT/grpo_rank{R}.pt from each.
"""

import json
import sys
from pathlib import Path

import torch

from alignbook.dpo import DPOSettings, train_dpo
from alignbook.grpo import GRPOSettings, train_grpo
from alignbook.lora import inject_lora
from alignbook.models import TINY, load_model, load_tokenizer
from alignbook.policy_gradient import ReinforceSettings, train_reinforce
from alignbook.ppo import PPOSettings, train_ppo
from alignbook.reward import RewardSettings, cache_features, load_reward_model, tokenize_pairs, train_reward
from alignbook.sft import SFTSettings, freeze_all_but, train_sft
from alignbook.training import prepare

out, batch = Path(sys.argv[1]), int(sys.argv[2])
accelerator, _ = prepare(torch.nn.Linear(1, 1))
main, rank = accelerator.is_main_process, accelerator.process_index
words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def save(name, history, model):
    if not main:
        return
    (out / f"{name}_history.json").write_text(json.dumps(history))
    torch.save(
        {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}, out / f"{name}_weights.pt"
    )


# SFT: completions of different lengths, so that the ranks hold different token counts
tok = load_tokenizer(TINY)
rows = [dict(prompt=f"Repeat {i}:", completion=" " + " ".join(words[: 1 + (3 * i) % 11])) for i in range(16)]
model = load_model(TINY, device="cpu")
freeze_all_but(model, ["model.layers.1.", "model.norm."])
save("sft", train_sft(model, rows, SFTSettings(steps=3, batch_size=batch, lr=1e-2, eval_every=0, seed=0), tok), model)

# reward: token pairs (the whole model runs) and cached features (the top layer runs)
rm, rtok = load_reward_model(TINY)
pairs = tokenize_pairs(
    [dict(prompt=f"Q{i}:", chosen=" " + " ".join(words[: 2 + i % 7]), rejected=" " + words[i % 12]) for i in range(16)],
    rtok,
)
freeze_all_but(rm, ["model.layers.1.", "model.norm.", "score."])
save("reward", train_reward(rm, pairs, RewardSettings(steps=3, batch_size=batch, lr=1e-2, trained_layers=1), rtok), rm)
rm, rtok = load_reward_model(TINY)
freeze_all_but(rm, ["model.layers.1.", "model.norm.", "score."])
feats = cache_features(rm, pairs, 1, rtok.pad_token_id)
save("features", train_reward(rm, feats, RewardSettings(steps=3, batch_size=batch, lr=1e-2, trained_layers=1)), rm)

# REINFORCE: each rank samples its own responses; the ranks must stay in sync
policy, ref = inject_lora(load_model(TINY, device="cpu"), ["q_proj", "v_proj"], r=2), load_model(TINY, device="cpu")
for p in ref.parameters():
    p.requires_grad_(False)
cfg = ReinforceSettings(steps=3, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=6, lr=1e-2)
history = train_reinforce(
    policy, ["Hello", "Hi there", "Name a color"], cfg, tok, lambda t, d: [len(x) / 10 for x in t], ref
)
torch.save(
    dict(history=history, weights={n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}),
    out / f"reinforce_rank{rank}.pt",
)

# PPO: the same, with a value head and several minibatch steps per batch; the pad token must not be EOS
tok.pad_token = "<|endoftext|>"
policy = inject_lora(load_model(TINY, device="cpu"), ["q_proj", "v_proj"], r=2)
cfg = PPOSettings(
    steps=2, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=6, lr=1e-2, ppo_epochs=2, num_minibatches=2
)
history = train_ppo(policy, ["Hello", "Hi there", "Name a color"], cfg, tok, lambda t, d: [len(x) / 10 for x in t], ref)
torch.save(
    dict(history=history, weights={n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}),
    out / f"ppo_rank{rank}.pt",
)

# DPO: pairs of different lengths; the reference is the policy with its adapters off, the trunk below layer 1 shared
pref = [
    dict(prompt=f"Q{i}:", chosen=" " + " ".join(words[: 2 + i % 7]), rejected=" " + words[i % 12]) for i in range(16)
]
torch.manual_seed(0)  # inject_lora draws A from the global generator: the same start in every run
policy = inject_lora(load_model(TINY, device="cpu"), ["layers.1.self_attn.q_proj", "layers.1.self_attn.v_proj"], r=2)
save("dpo", train_dpo(policy, pref, DPOSettings(steps=3, batch_size=batch, lr=1e-2, beta=0.5), tok), policy)


# GRPO: answers fixed by the prompt and the batch number, so that any layout of processes samples the same; the KL term
# to the reference (shared trunk), two steps on each batch; the dapo normaliser and the advantages span the processes
def fixed_answers(model, input_ids, attention_mask, num_return_sequences, **kw):
    fixed_answers.batch = getattr(fixed_answers, "batch", 0) + 1
    rows = []
    for prompt in input_ids.tolist():
        g = torch.Generator().manual_seed(sum(prompt) * 31 + fixed_answers.batch)
        for _ in range(num_return_sequences):
            n = int(torch.randint(1, 7, (1,), generator=g))  # 6 tokens: cut off, else ended by EOS
            rows.append((torch.randint(100, 4000, (n,), generator=g).tolist() + [tok.eos_token_id] * 6)[:6])
    return torch.cat([input_ids.repeat_interleave(num_return_sequences, 0), torch.tensor(rows)], 1)


grpo_prompts = [{"prompt": f"Name a {w}:", "topic": w} for w in "city shape tree bird song game color fruit".split()]
policy = inject_lora(load_model(TINY, device="cpu"), ["layers.1.self_attn.q_proj", "layers.1.self_attn.v_proj"], r=2)
cfg = GRPOSettings(
    steps=4, prompts_per_step=batch, num_generations=3, max_new_tokens=6, lr=1e-2, beta=0.1, num_iterations=2
)
history = train_grpo(
    policy,
    grpo_prompts,
    cfg,
    tok,
    lambda completions, topic, **kw: [len(c) / 10 + len(t) for c, t in zip(completions, topic)],
    load_model(TINY, device="cpu").requires_grad_(False),
    sample_fn=fixed_answers,
)
save("grpo", history, policy)
torch.save(
    dict(history=history, weights={n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}),
    out / f"grpo_rank{rank}.pt",
)

# leave together: without this, a rank that exits while gloo's threads still run can abort ("terminate called ...")
if torch.distributed.is_initialized():
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
