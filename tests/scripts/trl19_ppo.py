"""Run TRL 1.9.0's `trl.experimental.ppo.PPOTrainer` on fixed completions and save what it computed.

Started by tests/test_trl_ppo.py in a subprocess whose PYTHONPATH puts the TRL 1.9.0 folder first (TRL 1.16, the version
alignbook's dev extra installs, has no PPO). Generation is replaced by the given token ids; the policy's log-probs of
them
come from a forward pass at the sampling temperature, which is what `generate(..., output_scores=True)` returns.
Usage: python trl19_ppo.py SETUP.pt OUT.pt"""

import sys
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")
setup = torch.load(sys.argv[1])
import trl  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402
from trl.experimental.ppo import PPOConfig, PPOTrainer  # noqa: E402
from trl.experimental.ppo import ppo_trainer as module  # noqa: E402

assert trl.__version__ == "1.9.0", trl.__version__
d, c = setup["dirs"], setup["config"]
tok = AutoTokenizer.from_pretrained(d["policy"], padding_side="left")
tok.pad_token = setup["pad_token"]
policy = AutoModelForCausalLM.from_pretrained(d["policy"])
ref = AutoModelForCausalLM.from_pretrained(d["policy"])
reward_model = AutoModelForSequenceClassification.from_pretrained(d["reward"], num_labels=1)
value_model = AutoModelForSequenceClassification.from_pretrained(d["value"], num_labels=1)

batches, permutations = iter(setup["responses"]), iter(setup["permutations"])
captured = dict(scores=[], advantages=[], whitened=[], masks=[])


def fixed_generation(model, queries, local_rollout_forward_batch_size, pad_token_id, generation_config):
    query_responses = torch.cat([queries, next(batches)], 1)
    logits = module.forward(model, query_responses, pad_token_id).logits[:, queries.shape[1] - 1 : -1]
    return query_responses, logits / (generation_config.temperature)


get_reward = module.get_reward


def recording_get_reward(model, *args):
    out = get_reward(model, *args)
    if model is reward_model:
        captured["scores"].append(out[1].clone())
    return out


whiten = module.masked_whiten


def recording_whiten(values, mask, shift_mean=True):
    out = whiten(values, mask, shift_mean)
    captured["advantages"].append(values.clone())
    captured["whitened"].append(out.clone())
    captured["masks"].append(mask.clone())  # TRL's own response mask: where its advantages count
    return out


module.batch_generation = fixed_generation
module.get_reward = recording_get_reward
module.masked_whiten = recording_whiten
np.random.permutation = lambda n: next(permutations).numpy()

dataset = Dataset.from_dict({"input_ids": [tok(setup["prompt"])["input_ids"]] * 32})
args = PPOConfig(
    output_dir=setup["out_dir"],
    per_device_train_batch_size=c["batch"],
    gradient_accumulation_steps=1,
    num_mini_batches=c["minibatches"],
    num_ppo_epochs=c["epochs"],
    total_episodes=c["batch"] * c["steps"],
    learning_rate=c["lr"],
    lr_scheduler_type="linear",
    response_length=c["max_new"],
    temperature=c["temperature"],
    stop_token="eos",
    missing_eos_penalty=c["missing_eos_penalty"],
    kl_coef=c["beta"],
    vf_coef=c["vf_coef"],
    cliprange=c["clip"],
    cliprange_value=c["clip_value"],
    gamma=c["gamma"],
    lam=c["lam"],
    use_cpu=True,
    bf16=False,
    report_to=[],
    seed=0,
    num_sample_generations=0,
    save_strategy="no",
    logging_steps=1,
    disable_tqdm=True,
)
trainer = PPOTrainer(
    args=args,
    processing_class=tok,
    model=policy,
    ref_model=ref,
    reward_model=reward_model,
    train_dataset=dataset,
    value_model=value_model,
    eval_dataset=dataset,
)
trainer.train()
torch.save(
    dict(
        log=[h for h in trainer.state.log_history if "objective/kl" in h],
        policy={n: p.detach().clone() for n, p in policy.named_parameters()},
        value={n: p.detach().clone() for n, p in value_model.named_parameters()},
        **captured,
    ),
    sys.argv[2],
)
