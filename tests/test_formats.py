"Token ids and labels equal TRL 1.16's for every data format alignbook's SFT and reward trainers accept."

import tempfile
import warnings

import pytest
from datasets import Dataset
from trl import RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

from alignbook.models import TINY, load_model, load_tokenizer
from alignbook.reward import load_reward_model, tokenize_pairs
from alignbook.sft import prepare_sft

# SmolLM2's chat template with TRL's {% generation %} markers around each assistant reply and its end-of-turn token
MARKED = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + "
    "'<|im_end|>' }}{% endgeneration %}{{ '\\n' }}{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def talk(i):
    return [
        {"role": "user", "content": f"What is {i} plus {i}?"},
        {"role": "assistant", "content": f"It is {2 * i}."},
        {"role": "user", "content": "And times two?"},
        {"role": "assistant", "content": f"{4 * i}, of course."},
    ]


SFT_ROWS = {
    "prompt_completion": [
        dict(prompt=f"Q: what is {i} + {i}?\nA:", completion=f" {2 * i}, because {i} + {i} = {2 * i}.")
        for i in range(6)
    ],
    "chat_prompt_completion": [dict(prompt=talk(i)[:3], completion=talk(i)[3:]) for i in range(6)],
    "messages": [dict(messages=talk(i)) for i in range(6)],
    "text": [dict(text=f"Once upon a time there were {i} cats.") for i in range(6)],
}


def trl_sft(rows, tok, **kw):
    args = SFTConfig(output_dir=tempfile.mkdtemp(), report_to=[], use_cpu=True, bf16=False, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = SFTTrainer(
            load_model(TINY, device="cpu"), args=args, train_dataset=Dataset.from_list(rows), processing_class=tok
        )
    return [(r["input_ids"], r["labels"]) for r in trainer.train_dataset]


def ours_sft(rows, tok, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [
            (r["input_ids"], [t if m else -100 for t, m in zip(r["input_ids"], r["completion_mask"])])
            for r in prepare_sft(rows, tok, **kw)
        ]


@pytest.mark.parametrize("fmt", list(SFT_ROWS))
def test_sft_ids_and_labels_equal_trl(fmt):
    tok = load_tokenizer(TINY)
    extra = {}
    if fmt == "messages":  # TRL needs generation markers for assistant-only loss; ours finds the replies by prefixes
        tok.chat_template, extra = MARKED, dict(assistant_only_loss=True)
    ours, theirs = ours_sft(SFT_ROWS[fmt], tok), trl_sft(SFT_ROWS[fmt], tok, max_length=None, **extra)
    assert len(ours) == len(theirs) == 6
    assert ours == theirs
    assert all(any(t != -100 for t in labels) and any(t == -100 for t in labels) for _, labels in ours) or fmt == "text"


def test_messages_mask_is_the_same_with_the_plain_template():
    "SmolLM2's own template has no markers: the prefix method still finds the same assistant tokens."
    plain, marked = load_tokenizer(TINY), load_tokenizer(TINY)
    marked.chat_template = MARKED
    assert ours_sft(SFT_ROWS["messages"], plain) == ours_sft(SFT_ROWS["messages"], marked)


@pytest.mark.parametrize("mode", ["keep_start", "keep_end"])
def test_sft_truncation_equals_trl(mode):
    tok = load_tokenizer(TINY)
    rows = SFT_ROWS["prompt_completion"] + [dict(prompt="x " * 30, completion=" y")]  # its completion is cut off
    ours = ours_sft(rows, tok, max_length=12, truncation=mode)
    theirs = trl_sft(rows, tok, max_length=12, truncation_mode=mode)
    assert ours == theirs and all(len(ids) <= 12 for ids, _ in ours)


REWARD_ROWS = {
    "explicit_text": [dict(prompt=f"Q: {i} + {i}?", chosen=f" {2 * i}.", rejected=f" {2 * i + 1}.") for i in range(6)],
    "explicit_chat": [
        dict(prompt=talk(i)[:1], chosen=talk(i)[1:2], rejected=[{"role": "assistant", "content": "No."}])
        for i in range(6)
    ],
    "implicit_text": [dict(chosen=f"Q: {i} + {i}? {2 * i}.", rejected=f"Q: {i} + {i}? {2 * i + 1}.") for i in range(6)],
    "implicit_chat": [
        dict(chosen=talk(i)[:2], rejected=talk(i)[:1] + [{"role": "assistant", "content": "No."}]) for i in range(6)
    ],
}


@pytest.mark.parametrize("fmt", list(REWARD_ROWS))
def test_reward_pairs_equal_trl(fmt):
    model, tok = load_reward_model(TINY)
    args = RewardConfig(output_dir=tempfile.mkdtemp(), report_to=[], use_cpu=True, bf16=False, max_length=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = RewardTrainer(
            model, args=args, train_dataset=Dataset.from_list(REWARD_ROWS[fmt]), processing_class=tok
        )
    theirs = [(r["chosen_ids"], r["rejected_ids"]) for r in trainer.train_dataset]
    ours = [(r["chosen_ids"], r["rejected_ids"]) for r in tokenize_pairs(REWARD_ROWS[fmt], tok)]
    assert len(ours) == 6 and ours == theirs


def test_reward_over_long_pairs_are_dropped_like_trl():
    model, tok = load_reward_model(TINY)
    rows = REWARD_ROWS["explicit_text"] + [dict(prompt="long " * 40, chosen=" a", rejected=" b")]
    args = RewardConfig(output_dir=tempfile.mkdtemp(), report_to=[], use_cpu=True, bf16=False, max_length=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = RewardTrainer(model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
        ours = tokenize_pairs(rows, tok, max_length=20)
    assert [(r["chosen_ids"], r["rejected_ids"]) for r in trainer.train_dataset] == [
        (r["chosen_ids"], r["rejected_ids"]) for r in ours
    ]
    assert len(ours) == 6
