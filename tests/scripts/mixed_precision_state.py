"""An Accelerator made earlier in the process with bf16 (as TRL's configs do by default) must not change what
alignbook's
trainers compute: the first DPO step of a fresh LoRA policy is exactly log 2 with precomputed reference log-probs."""

import math
import warnings

from accelerate import Accelerator

from alignbook.dpo import DPOSettings, precompute_reference, tokenize_preferences, train_dpo
from alignbook.lora import inject_lora
from alignbook.models import TINY, load_model, load_tokenizer

Accelerator(cpu=True, mixed_precision="bf16")  # what a TRL Trainer with its default bf16=True leaves
tok = load_tokenizer(TINY)
rows = tokenize_preferences(
    [dict(prompt=f"Question {i} " * 8, chosen=f" yes {i} " * 6, rejected=f" no {i}") for i in range(8)], tok
)
policy = inject_lora(load_model(TINY, device="cpu"), ["q_proj", "v_proj"], r=4)
rows = precompute_reference(policy, rows, tok.pad_token_id)  # float32, outside any trainer
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    loss = train_dpo(policy, rows, DPOSettings(steps=1, batch_size=8, shared_trunk=False), tok)[0]["loss"]
print(f"first loss {loss!r}, log 2 = {math.log(2)!r}")
assert abs(loss - math.log(2)) < 1e-6, loss
assert any("ignore it" in str(w.message) for w in caught), [str(w.message) for w in caught]
