"Our SFT labels equal TRL 1.16's (SFTTrainer's tokenization + collator), token for token; masking edge cases."

import pytest
import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from alignbook.data import load_instructions
from alignbook.models import TINY, load_model, load_tokenizer
from alignbook.sft import (
    TEMPLATES,
    SFTSettings,
    cache_trunk,
    collate_sft,
    freeze_all_but,
    json_format_rows,
    prepare_sft,
    render,
    tokenize_sft,
    top_layers,
    train_sft,
)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def trl_batch(rows, tok):
    "TRL's labels for prompt/completion `rows`: SFTTrainer's prepared dataset through its data collator."
    args = SFTConfig(
        output_dir="/tmp/alignbook_test_sft",
        report_to=[],
        use_cpu=True,
        bf16=False,
        max_length=None,
        completion_only_loss=True,
        per_device_train_batch_size=len(rows),
        activation_checkpointing=False,
    )
    trainer = SFTTrainer(
        load_model(TINY, device="cpu"), args=args, train_dataset=Dataset.from_list(rows), processing_class=tok
    )
    return trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])


@pytest.mark.parametrize("template", TEMPLATES)
def test_labels_equal_trl(tok, local_data, template):
    raw = [r for r in load_instructions("alpaca-cleaned").select(range(200)) if len(r["output"]) < 400][:64]
    assert sum(bool(r["input"]) for r in raw) > 10  # rows with and without input
    rows = [render(r, template, tok) for r in raw]
    ours = collate_sft([tokenize_sft(tok, **r) for r in rows], tok.pad_token_id)
    theirs = trl_batch(rows, tok)
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["labels"], theirs["labels"])
    assert torch.equal(ours["attention_mask"], theirs["attention_mask"])


def test_where_trl_silently_shifts_the_boundary_we_refuse(tok):
    row = dict(prompt="Answer: ", completion="Blue")  # the trailing space merges into the completion's first token
    with pytest.raises(ValueError, match="not a prefix"):
        tokenize_sft(tok, **row)
    theirs = trl_batch([row], tok)  # TRL trains on it, with the prompt's last token dropped from the context
    assert (theirs["labels"] != -100).sum() >= 1


def test_unmasked_labels_every_real_token(tok):
    rows = [tokenize_sft(tok, "Q: a", " b"), tokenize_sft(tok, "Q: longer question", " c")]
    b = collate_sft(rows, tok.pad_token_id, mask_prompt=False)
    assert torch.equal(b["labels"] != -100, b["attention_mask"].bool())


def test_prepare_counts_every_dropped_row(tok):
    rows = [
        dict(instruction="Say hi", output="hi"),
        dict(instruction="Say hi", output=" "),
        dict(output="x"),
        dict(instruction="Long " * 300, output="ok"),
    ]
    with pytest.warns(UserWarning, match=r"dropped 3 of 4 rows: .*1 longer than 64 tokens"):
        kept = prepare_sft(rows, tok, "alpaca", max_length=64)
    assert len(kept) == 1
    with pytest.raises(ValueError, match="unknown template"):
        prepare_sft(rows, tok, "vicuna")


def test_train_only_and_bad_prefix():
    model = load_model(TINY, device="cpu")
    n = freeze_all_but(model, top_layers(model, 1))
    assert n == sum(
        p.numel() for name, p in model.named_parameters() if name.startswith(("model.layers.1.", "model.norm."))
    )
    with pytest.raises(ValueError, match="no parameter"):
        freeze_all_but(model, ["decoder.block."])


def test_train_sft_lowers_the_loss_of_its_rows(tok):
    model = load_model(TINY, device="cpu")
    freeze_all_but(model, ["model."])  # the whole tiny model: a random network needs its embeddings trained too
    rows = prepare_sft(json_format_rows(16, seed=0), tok, "chat")
    hist = train_sft(model, rows, SFTSettings(steps=30, batch_size=8, lr=3e-3, eval_every=0), tok)
    losses = [h["loss"] for h in hist]
    assert [h["step"] for h in hist] == list(range(1, 31))
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_cached_trunk_equals_the_full_model_and_sfttrainer(tok):
    """Three steps of the top layer on trunk states cached once give TRL's SFTTrainer losses and the uncached loop's
    weights (the tiny model: 2 layers, the top one trained)."""
    raw = json_format_rows(12, seed=0)
    rows = prepare_sft(raw, tok, "chat")
    cfg = SFTSettings(steps=3, batch_size=4, lr=1e-3, eval_every=0, seed=None)

    def fresh():
        model = load_model(TINY, device="cpu")
        freeze_all_but(model, top_layers(model, 1))
        return model

    cached_model, full_model, trl_model = fresh(), fresh(), fresh()
    cached = cache_trunk(cached_model, rows, trained_layers=1)
    ours = [h["loss"] for h in train_sft(cached_model, cached, cfg, tok)]
    full = [h["loss"] for h in train_sft(full_model, rows, cfg, tok)]
    args = SFTConfig(
        output_dir="/tmp/alignbook_test_sft_cached",
        report_to=[],
        use_cpu=True,
        bf16=False,
        max_length=None,
        completion_only_loss=True,
        per_device_train_batch_size=4,
        max_steps=3,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        optim="adamw_torch",
        weight_decay=0.0,
        max_grad_norm=1.0,
        train_sampling_strategy="sequential",
        logging_steps=1,
        save_strategy="no",
        activation_checkpointing=False,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        trl_model,
        args=args,
        processing_class=tok,
        train_dataset=Dataset.from_list([render(r, "chat", tok) for r in raw]),
    )
    trainer.train()
    trl = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(trl), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(full), rtol=1e-5, atol=1e-6)
    assert abs(ours[2] - ours[0]) > 1e-2  # the steps moved the loss: equal histories are not three equal numbers
    for (name, a), b in zip(cached_model.named_parameters(), full_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


def test_cached_trunk_refuses_what_it_cannot_train(tok):
    rows = prepare_sft(json_format_rows(4, seed=0), tok, "chat")
    model = load_model(TINY, device="cpu")
    cached = cache_trunk(model, rows, trained_layers=1)
    with pytest.raises(ValueError, match="get no gradient"):  # every weight trainable, the cache below the top layer
        train_sft(model, cached, SFTSettings(steps=1, batch_size=2), tok)
    with pytest.raises(ValueError, match="one cache_trunk call"):
        collate_sft([cached[0], rows[1]], tok.pad_token_id)
    with pytest.raises(ValueError, match="trained_layers must be in 1..2"):
        cache_trunk(model, rows, trained_layers=3)
