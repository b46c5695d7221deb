import time
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from alignbook.distributions import response_mask
from alignbook.policy_gradient import check_reference, check_rewards, shared_trunk_depth, trunk_states
from alignbook.reward import check_reward_model
from alignbook.sampling import generate
from alignbook.training import (
    TrainConfig,
    check_finite,
    lr_factor,
    log_row,
    prepare,
    sampling_generator,
    trainable_parameters,
    training_mode,
    unwrap,
)

# %%
def truncate_after_eos(responses:torch.Tensor, eos_token_id:int, pad_token_id:int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    "The EOS trick: (responses with every token after the first EOS replaced by pad, the mask up to and including it, ended)."
    if pad_token_id == eos_token_id:
        raise ValueError(f"the pad token is the EOS token (id {eos_token_id}): a padded slot and a real EOS look the same, so "
                         "the score would be read at the wrong token. Set tokenizer.pad_token to another token, e.g. "
                         "'<|endoftext|>' for SmolLM2.")
    mask = response_mask(responses, [eos_token_id])
    ended = (responses == eos_token_id).any(-1)
    return torch.where(mask.bool(), responses, torch.full_like(responses, pad_token_id)), mask, ended

# %%
def temperature_logprobs(logits:torch.Tensor, tokens:torch.Tensor, temperature:float=1.0) -> tuple[torch.Tensor, torch.Tensor]:
    "log π_T(token) from logits ÷ T (the distribution the tokens were sampled from), and that distribution's entropy."
    logp_all = F.log_softmax(logits.float() / temperature, -1)
    return logp_all.gather(-1, tokens[..., None]).squeeze(-1), -(logp_all.exp() * logp_all).sum(-1)

# %%
def last_response_index(mask:torch.Tensor) -> torch.Tensor:
    "Per row, the index of the last response token (the EOS, or the final token of a cut-off response)."
    return (mask.sum(-1) - 1).clamp(min=0)

def kl_estimate(logp:torch.Tensor, ref_logp:torch.Tensor, estimator:str="k1") -> torch.Tensor:
    "Per-token estimate of KL(π || π_ref) from the sampled token: k1 = log π/π_ref, k3 = (r - 1) - log r with r = π_ref/π."
    log_ratio = ref_logp - logp
    if estimator == "k1": return -log_ratio
    if estimator == "k3": return log_ratio.exp() - 1 - log_ratio
    raise ValueError(f"kl_estimator must be 'k1' or 'k3', got {estimator!r}")

def per_token_rewards(scores:torch.Tensor, kl:torch.Tensor, mask:torch.Tensor, kl_coef:float,
                      score_after_eos:bool=False) -> tuple[torch.Tensor, torch.Tensor]:
    "r_t = -β·KL_t on every response token, plus the score at the last one; returns (rewards, the mask of valued states)."
    rewards = -kl_coef * kl * mask
    last = last_response_index(mask)
    value_mask = mask.clone()
    if score_after_eos:   # TRL 1.9: one slot after the EOS, when there is room
        last = torch.where(last + 1 < mask.shape[1], last + 1, last)
        value_mask[torch.arange(len(last)), last] = 1
    rewards[torch.arange(len(last)), last] += scores
    return rewards, value_mask

# %%
def gae(rewards:torch.Tensor, values:torch.Tensor, gamma:float=1.0, lam:float=0.95) -> tuple[torch.Tensor, torch.Tensor]:
    "Generalised advantage estimation along the last dimension (values and rewards are 0 after the end): (advantages, returns)."
    T = rewards.shape[-1]
    next_values = torch.cat([values[..., 1:], torch.zeros_like(values[..., :1])], -1)
    deltas = rewards + gamma * next_values - values                                   # δ_t = r_t + γ V_{t+1} - V_t
    t = torch.arange(T, device=rewards.device)
    k = t[None, :] - t[:, None]                                                        # k = s - t
    weights = torch.where(k >= 0, (gamma * lam) ** k.clamp(min=0).to(rewards.dtype), torch.zeros((), dtype=rewards.dtype))
    advantages = deltas @ weights.T                                                    # A_t = Σ_{s≥t} (γλ)^{s-t} δ_s
    return advantages, advantages + values

def gae_loop(rewards:torch.Tensor, values:torch.Tensor, gamma:float=1.0, lam:float=0.95) -> torch.Tensor:
    "The same advantages by the textbook backward recursion A_t = δ_t + γλ A_{t+1} (the reference for `gae`)."
    last, out = torch.zeros_like(rewards[..., 0]), []
    for t in reversed(range(rewards.shape[-1])):
        next_value = values[..., t + 1] if t + 1 < rewards.shape[-1] else 0.0
        last = rewards[..., t] + gamma * next_value - values[..., t] + gamma * lam * last
        out.append(last)
    return torch.stack(out[::-1], -1)

# %%
def masked_mean(x:torch.Tensor, mask:torch.Tensor) -> torch.Tensor:
    "Mean of `x` over the positions where `mask` is 1."
    return (x * mask).sum() / mask.sum()

def masked_whiten(x:torch.Tensor, mask:torch.Tensor, shift_mean:bool=True, eps:float=1e-8) -> torch.Tensor:
    "(x - mean) / std over the masked positions (unbiased variance), zero elsewhere; `shift_mean=False` keeps the mean."
    n = mask.sum()
    if n < 2: raise ValueError("whitening needs at least 2 masked values; use a larger batch or turn whitening off")
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask) * n / (n - 1)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean: out = out + mean
    return out * mask

# %%
def ppo_policy_loss(logp:torch.Tensor, old_logp:torch.Tensor, advantages:torch.Tensor, mask:torch.Tensor,
                    clip:float=0.2) -> tuple[torch.Tensor, dict]:
    "Per-token clipped surrogate, averaged over the response tokens; with its diagnostics (clip fraction, approximate KL)."
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()
    unclipped, clipped = -advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        stats = dict(clipfrac=masked_mean((clipped > unclipped).float(), mask), approx_kl=0.5 * masked_mean(log_ratio**2, mask),
                     ratio=masked_mean(ratio, mask))
    return loss, stats

def ppo_value_loss(values:torch.Tensor, old_values:torch.Tensor, returns:torch.Tensor, mask:torch.Tensor,
                   clip:float|None=0.2) -> tuple[torch.Tensor, torch.Tensor]:
    "½·max((V - R)², (clip(V, V_old ± ε) - R)²) averaged over the valued states; and the fraction where the clipped term won."
    unclipped = (values - returns) ** 2
    if clip is None: return 0.5 * masked_mean(unclipped, mask), torch.zeros(())
    clipped = (old_values + (values - old_values).clamp(-clip, clip) - returns) ** 2
    return 0.5 * masked_mean(torch.max(unclipped, clipped), mask), masked_mean((clipped > unclipped).float(), mask).detach()

def explained_variance(values:torch.Tensor, returns:torch.Tensor, mask:torch.Tensor) -> float:
    "1 - Var(R - V)/Var(R) over the valued states: 1 = the value function predicts the returns, ≤ 0 = no better than their mean."
    r, v = returns[mask.bool()], values[mask.bool()]
    return float(1 - (r - v).var() / r.var().clamp(min=1e-12))

# %%
def adaptive_kl_coef(kl_coef:float, kl:float, target:float, n:int, horizon:int=10_000) -> float:
    "Ziegler et al. (2019): β ← β·(1 + clip(KL/target - 1, -0.2, 0.2)·n/horizon), after a batch of `n` samples with mean KL `kl`."
    error = min(max(kl / target - 1, -0.2), 0.2)
    return kl_coef * (1 + error * n / horizon)

# %%
class ValueHead(nn.Module):
    "The cheap critic: V(s_t) = w·h_t + b on the policy's last hidden state (after its final norm), starting at 0."
    def __init__(self, hidden_size:int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight); nn.init.zeros_(self.linear.bias)
    def forward(self, hidden:torch.Tensor) -> torch.Tensor: return self.linear(hidden.float()).squeeze(-1)

class PolicyAndValue(nn.Module):
    "The policy and its critic (a `ValueHead` or a separate value model) as one module, so one optimizer and DDP see both."
    def __init__(self, policy:nn.Module, value:nn.Module):
        super().__init__()
        self.policy, self.value = policy, value

# %%
def _rows(x, idx):
    "Rows `idx` of every batch-first tensor in `x` (nested in tuples and dicts); anything else as it is."
    if isinstance(x, torch.Tensor): return x[idx] if x.dim() > 0 else x
    if isinstance(x, tuple): return tuple(_rows(v, idx) for v in x)
    if isinstance(x, dict): return {k: _rows(v, idx) for k, v in x.items()}
    return x

def _positions(attention_mask): return (attention_mask.cumsum(-1) - 1).clamp(min=0)

def response_hidden(model, input_ids:torch.Tensor, attention_mask:torch.Tensor, prompt_width:int, width:int,
                    trunk:dict|None=None, first_layer:int|None=None) -> torch.Tensor:
    "The final-norm hidden state of each state s_t = (prompt, response[:t]), t < `width`: (batch, width, hidden)."
    if trunk is None:
        h = model.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=_positions(attention_mask),
                             use_cache=False).last_hidden_state
    else:   # the frozen trunk ran once: only the layers from `first_layer` up
        h = trunk["hidden"]
        for layer in model.model.layers[first_layer:]:
            h = layer(h, **trunk["kwargs"])
            if isinstance(h, tuple): h = h[0]
        h = model.model.norm(h)
    return h[:, prompt_width - 1:prompt_width - 1 + width]

def response_logprobs(model, hidden:torch.Tensor, responses:torch.Tensor, mask:torch.Tensor,
                      temperature:float) -> tuple[torch.Tensor, torch.Tensor]:
    "Per-token log π_T and entropy of the response tokens (zero where `mask` is 0); the vocabulary only where scored."
    scored = mask.bool()
    logits = model.get_output_embeddings()(hidden[scored])
    lp, ent = temperature_logprobs(logits, responses[scored], temperature)
    zeros = torch.zeros(mask.shape, dtype=lp.dtype, device=lp.device)
    return zeros.masked_scatter(scored, lp), zeros.masked_scatter(scored, ent)

def policy_and_values(pv:PolicyAndValue, roll:dict, idx, temperature:float, trunk:dict|None, first_layer:int|None):
    "Log-probs, entropies (batch, width) and values (batch, width) of rollouts `idx` under the current policy and critic."
    ids, attn, resp, mask = roll["input_ids"][idx], roll["attention_mask"][idx], roll["responses"][idx], roll["mask"][idx]
    P, L = roll["prompt_width"], resp.shape[1]
    h = response_hidden(pv.policy, ids, attn, P, L, _rows(trunk, idx), first_layer)
    logp, ent = response_logprobs(pv.policy, h, resp, mask, temperature)
    if isinstance(pv.value, ValueHead): values = pv.value(h)
    else:                               # TRL's layout: a separate value model (a one-output sequence classifier)
        hv = response_hidden(pv.value, ids, attn, P, L)
        values = pv.value.score(hv).squeeze(-1).float()
    return logp, ent, values

@torch.no_grad()
def score_responses(reward_model, input_ids:torch.Tensor, attention_mask:torch.Tensor) -> torch.Tensor:
    "r(x, y): the reward model's score read at each row's last real token (the EOS, or the last token of a cut-off reply)."
    h = reward_model.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=_positions(attention_mask),
                                use_cache=False).last_hidden_state
    last = attention_mask.shape[1] - 1 - attention_mask.flip(-1).argmax(-1)
    return reward_model.score(h[torch.arange(len(h), device=h.device), last]).squeeze(-1).float()

# %%
@dataclass
class PPOSettings(TrainConfig):
    "Hyper-parameters of `train_ppo`: `TrainConfig`'s (`steps` = PPO iterations; `batch_size` is unused) and PPO's own."
    steps: int = 10  # PPO iterations: each samples one batch of rollouts, then updates on it ppo_epochs × num_minibatches times
    lr: float = 5e-4  # AdamW learning rate (the schedule moves once per iteration, as in TRL)
    prompts_per_step: int = 8  # prompts per rollout batch, on each process
    samples_per_prompt: int = 1  # responses per prompt
    max_new_tokens: int = 16  # response length limit
    max_prompt_length: int|None = 256  # longer prompts are dropped (and counted) before training; None: keep all
    temperature: float = 1.0  # sampling temperature; log-probs are taken at the same temperature (logits ÷ T)
    ppo_epochs: int = 4  # passes over each rollout batch
    num_minibatches: int = 2  # optimizer steps per pass
    clip: float = 0.2  # ε of the clipped surrogate
    clip_value: float|None = 0.2  # ε of the clipped value loss; None: no value clipping
    vf_coef: float = 0.1  # weight of the value loss
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE's λ
    kl_coef: float = 0.05  # β: r_t -= β · KL_t
    kl_estimator: str = "k1"  # the per-token KL in the reward: 'k1' (log π/π_ref) or 'k3'
    kl_target: float|None = None  # the adaptive controller's target KL per response (nats); None: β stays fixed
    kl_horizon: int = 10_000  # the adaptive controller's horizon (samples)
    whiten_rewards: bool = False  # whiten the per-token rewards (mean kept) before GAE
    whiten_advantages: bool = True  # whiten the advantages over the batch's response tokens
    missing_eos_penalty: float|None = None  # subtracted from the score of a response cut off before its EOS
    score_after_eos: bool = False  # TRL 1.9's placement: the score one slot after the EOS (see the chapter)
    shared_trunk: bool = True  # run the frozen layers below the adapters once for policy and reference (checked)

    def problems(self) -> list[str]:
        return super().problems() + [msg for ok, msg in [
            (self.prompts_per_step >= 1, f"prompts_per_step must be >= 1, got {self.prompts_per_step}"),
            (self.samples_per_prompt >= 1, f"samples_per_prompt must be >= 1, got {self.samples_per_prompt}"),
            (self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}"),
            (self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
            (self.ppo_epochs >= 1, f"ppo_epochs must be >= 1, got {self.ppo_epochs}"),
            (self.num_minibatches >= 1 and (self.prompts_per_step * self.samples_per_prompt) % (self.num_minibatches * self.grad_accum_steps) == 0,
             f"a rollout batch of {self.prompts_per_step * self.samples_per_prompt} must split into num_minibatches × "
             f"grad_accum_steps = {self.num_minibatches * self.grad_accum_steps} equal parts"),
            (self.clip > 0, f"clip must be > 0, got {self.clip}"),
            (self.clip_value is None or self.clip_value > 0, f"clip_value must be > 0 or None, got {self.clip_value}"),
            (0 < self.gamma <= 1 and 0 <= self.lam <= 1, f"need 0 < gamma <= 1 and 0 <= lam <= 1, got {self.gamma}, {self.lam}"),
            (self.kl_coef >= 0, f"kl_coef must be >= 0, got {self.kl_coef}"),
            (self.kl_estimator in ("k1", "k3"), f"kl_estimator must be 'k1' or 'k3', got {self.kl_estimator!r}"),
            (self.kl_target is None or (self.kl_target > 0 and self.kl_coef > 0),
             f"kl_target must be > 0 and needs kl_coef > 0, got {self.kl_target}, {self.kl_coef}"),
            (self.seed is not None, "PPO needs an integer seed")] if not ok]

# %%
def check_prompts(prompts:list[str], tokenizer, max_length:int|None) -> list[str]:
    "The prompts that fit `max_length` tokens; the others are dropped with a warning that counts them (all dropped: an error)."
    if not prompts: raise ValueError("no prompts")
    if max_length is None: return list(prompts)
    kept = [p for p in prompts if len(tokenizer(p)["input_ids"]) <= max_length]
    if not kept: raise ValueError(f"all {len(prompts)} prompts are longer than max_prompt_length={max_length} tokens")
    if len(kept) < len(prompts):
        warnings.warn(f"train_ppo: dropped {len(prompts) - len(kept)} of {len(prompts)} prompts longer than {max_length} tokens")
    return kept

def _critic(policy, value_model, reward_model):
    if value_model is None: return ValueHead(unwrap(policy).config.hidden_size).to(next(policy.parameters()).device)
    check_reward_model(value_model)
    if value_model is reward_model:
        raise ValueError("the value model is the reward model: training it would change the rewards. Initialise a separate "
                         "copy from the reward model (TRL's layout)")
    return value_model

# %%
def train_ppo(policy, prompts:list[str], cfg:PPOSettings|None=None, tokenizer=None, reward_fn=None, ref=None,
              reward_model=None, value_model=None, sample_fn=generate) -> list[dict]:
    "PPO with a KL-shaped reward, GAE and a critic (a value head on the policy, or TRL's separate `value_model`); the history."
    cfg = cfg or PPOSettings()
    if tokenizer is None or (reward_fn is None) == (reward_model is None):
        raise ValueError("train_ppo needs the tokenizer and exactly one of reward_fn (texts, finished) or reward_model")
    if reward_model is not None: check_reward_model(reward_model)
    check_reference(policy, ref)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    truncate_after_eos(torch.zeros(1, 1, dtype=torch.long), eos, pad)   # refuses pad == EOS before any work
    prompts = check_prompts(prompts, tokenizer, cfg.max_prompt_length)
    pv = PolicyAndValue(policy, _critic(policy, value_model, reward_model))
    params = trainable_parameters(pv)
    first_layer = shared_trunk_depth(policy, ref) if cfg.shared_trunk else None
    accelerator, wrapped = prepare(pv)
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: lr_factor(cfg, t))   # stepped once per iteration
    pick, shuffle = torch.Generator().manual_seed(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    n, k, beta, history, seen = cfg.prompts_per_step, cfg.samples_per_prompt, cfg.kl_coef, [], 0
    B = n * k
    mb_size = B // cfg.num_minibatches
    with training_mode(pv, tokenizer, padding_side="left"):
        pv.eval()   # no dropout anywhere: the ratio π/π_old must be exactly 1 before the first update
        for step in tqdm(range(1, cfg.steps + 1), desc="PPO", disable=not accelerator.is_main_process):
            t0, lr = time.perf_counter(), opt.param_groups[0]["lr"]
            # 1. rollouts: k responses to each of this process's prompts, cut after the first EOS
            chosen = torch.randint(0, len(prompts), (n * world,), generator=pick)[rank * n:(rank + 1) * n].tolist()
            enc = tokenizer([prompts[i] for i in chosen], return_tensors="pt", padding=True).to(device)
            with torch.no_grad():
                seqs = sample_fn(policy, enc["input_ids"], enc["attention_mask"], do_sample=True, temperature=cfg.temperature,
                                 top_k=0, max_new_tokens=cfg.max_new_tokens, num_return_sequences=k,
                                 generator=sampling_generator(cfg.seed, step - 1, rank, device))
            t_gen = time.perf_counter() - t0
            P = enc["input_ids"].shape[1]
            responses, mask, ended = truncate_after_eos(seqs[:, P:], eos, pad)
            prompt_ids, prompt_mask = enc["input_ids"].repeat_interleave(k, 0), enc["attention_mask"].repeat_interleave(k, 0)
            roll = dict(input_ids=torch.cat([prompt_ids, responses], 1), attention_mask=torch.cat([prompt_mask, mask], 1),
                        responses=responses, mask=mask, prompt_width=P)
            # 2. scores: the reward model at the last response token, or the reward function on the texts
            if reward_model is not None: scores = score_responses(reward_model, roll["input_ids"], roll["attention_mask"])
            else: scores = reward_fn(tokenizer.batch_decode(responses, skip_special_tokens=True), ended.tolist())
            scores = check_rewards(scores.cpu() if torch.is_tensor(scores) else scores, B).to(device)
            if cfg.missing_eos_penalty is not None: scores = scores - cfg.missing_eos_penalty * (~ended).float()
            # 3. log-probs, values and per-token rewards of the rollouts, before any update
            everyone = torch.arange(B, device=device)
            with torch.no_grad():
                trunk = trunk_states(policy, roll["input_ids"], roll["attention_mask"], first_layer) if first_layer else None
                old_logp, _, old_values = policy_and_values(pv, roll, everyone, cfg.temperature, trunk, first_layer)
                h_ref = response_hidden(ref, roll["input_ids"], roll["attention_mask"], P, mask.shape[1], trunk, first_layer)
                ref_logp, _ = response_logprobs(ref, h_ref, responses, mask, cfg.temperature)
                kl = kl_estimate(old_logp, ref_logp, cfg.kl_estimator) * mask
                rewards, value_mask = per_token_rewards(scores, kl, mask, beta, cfg.score_after_eos)
                old_values = old_values * value_mask
                if cfg.whiten_rewards: rewards = masked_whiten(rewards, value_mask, shift_mean=False)
                advantages, returns = gae(rewards, old_values, cfg.gamma, cfg.lam)
                if cfg.whiten_advantages: advantages = masked_whiten(advantages, mask)
                else: advantages = advantages * mask
            # 4. ppo_epochs passes over the batch, num_minibatches optimizer steps each (a fresh shuffle every pass)
            totals = torch.zeros(8, device=device)   # loss, policy loss, value loss, clip frac, value clip frac, approx KL, entropy, ratio
            updates = 0
            for epoch in range(cfg.ppo_epochs):
                order = torch.randperm(B, generator=shuffle).to(device)
                for start in range(0, B, mb_size):
                    minibatch = order[start:start + mb_size]
                    micro = minibatch.chunk(cfg.grad_accum_steps)
                    for m, idx in enumerate(micro):
                        with accelerator.no_sync(wrapped) if m < len(micro) - 1 else torch.enable_grad():
                            logp, ent, values = wrapped(policy_and_values, roll, idx, cfg.temperature, trunk, first_layer)
                            values = values * value_mask[idx]
                            pg_loss, st = ppo_policy_loss(logp, old_logp[idx], advantages[idx], mask[idx], cfg.clip)
                            vf_loss, vf_clip = ppo_value_loss(values, old_values[idx], returns[idx], value_mask[idx], cfg.clip_value)
                            loss = pg_loss + cfg.vf_coef * vf_loss
                            check_finite(loss, step)
                            accelerator.backward(loss / len(micro))
                        totals += torch.stack([loss.detach(), pg_loss.detach(), vf_loss.detach(), st["clipfrac"], vf_clip.to(device),
                                               st["approx_kl"], masked_mean(ent.detach(), mask[idx]), st["ratio"]]) / len(micro)
                    norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm is not None else float("inf"))
                    check_finite(norm, step, "gradient norm")
                    opt.step(); opt.zero_grad(set_to_none=True)
                    updates += 1
            sched.step()
            # 5. log; adapt β to the KL target (Ziegler et al. 2019)
            kl_seq, scores_mean = kl.sum(-1).mean(), scores.mean()
            stats = accelerator.reduce(torch.cat([totals / updates, torch.stack([
                kl_seq, scores_mean, scores.std() if B > 1 else torch.zeros((), device=device), mask.sum(-1).float().mean(),
                (~ended).float().mean(), (-old_logp * mask).sum(-1).mean(),
                torch.tensor(explained_variance(old_values, returns, value_mask), device=device)])]), "mean")
            check_finite(stats[0], step)
            tokens = int(accelerator.reduce(roll["attention_mask"].sum(), "sum"))
            seen += tokens
            row = log_row(step, 0.0, stats[0].item(), lr, float(norm), seen, time.perf_counter() - t0, tokens,
                          reward=stats[9].item(), reward_std=stats[10].item(), kl=(stats[8] / stats[11]).item(),
                          kl_coef=beta, generation_seconds=t_gen, **{
                              "objective/kl": stats[8].item(), "objective/scores": stats[9].item(),
                              "objective/non_score_reward": -beta * stats[8].item(),
                              "objective/rlhf_reward": stats[9].item() - beta * stats[8].item(),
                              "objective/entropy": stats[13].item(), "loss/policy_avg": stats[1].item(),
                              "loss/value_avg": stats[2].item(), "policy/clipfrac_avg": stats[3].item(),
                              "val/clipfrac_avg": stats[4].item(), "policy/approxkl_avg": stats[5].item(),
                              "policy/entropy_avg": stats[6].item(), "val/ratio": stats[7].item(),
                              "val/explained_variance": stats[14].item(),
                              "completions/mean_length": stats[11].item(), "completions/clipped_ratio": stats[12].item()})
            history.append(row)
            if cfg.kl_target is not None: beta = adaptive_kl_coef(beta, stats[8].item(), cfg.kl_target, B * world, cfg.kl_horizon)
    return history
