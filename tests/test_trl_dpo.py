"""Our DPO equals TRL 1.16's `DPOTrainer`: tokenization, every loss type with its logged metrics on random and real
batches, and training step for step with LoRA (PEFT on TRL's side, ours on ours), the reference being the policy with
its
adapters off on both sides."""

import warnings

import pandas as pd
import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from torch.utils.data import SequentialSampler
from transformers import PrinterCallback
from trl import DPOConfig, DPOTrainer

from alignbook.data import load_hh_rlhf, load_preferences
from alignbook.dpo import (
    DPO_LOSSES,
    DPOSettings,
    collate_preferences,
    completion_logps,
    dpo_loss,
    preference_metrics,
    preference_sums,
    tokenize_preferences,
    train_dpo,
)
from alignbook.lora import copy_from_peft, inject_lora
from alignbook.models import TINY, load_model, load_tokenizer

TOY = [
    dict(prompt="Q: What color is the sky?\nA:", chosen=" Blue.", rejected=" Green, mostly."),
    dict(prompt="Say hi.", chosen=" Hi!", rejected=" No."),
    dict(prompt="Two plus two is", chosen=" four.", rejected=" five, I think."),
    dict(prompt="Name a fruit:", chosen=" apple", rejected=" a chair"),
]
USER, BOT = (lambda t: [{"role": "user", "content": t}]), (lambda t: [{"role": "assistant", "content": t}])
FORMATS = {  # TRL's preference formats (a dataset holds one format)
    "text": TOY,
    "implicit text": [
        dict(chosen="Two plus two is four.", rejected="Two plus two is five, I think."),
        dict(chosen="The sky is blue.", rejected="The sky is green."),
    ],
    "conversational": [
        dict(prompt=USER("Say hi."), chosen=BOT("Hi!"), rejected=BOT("No.")),
        dict(prompt=USER("2 + 2?") + BOT("4") + USER("And 3 + 3?"), chosen=BOT("6"), rejected=BOT("7")),
    ],
    "implicit conversational": [dict(chosen=USER("Say hi.") + BOT("Hi!"), rejected=USER("Say hi.") + BOT("No."))],
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved tiny model, its tokenizer, and a second copy with every weight moved (a policy that differs from the
    reference)."""
    tok = load_tokenizer(TINY)
    path = tmp_path_factory.mktemp("tiny")
    load_model(TINY, device="cpu").save_pretrained(path)
    tok.save_pretrained(path)
    return path, tok


def _trainer(path, tok, rows, tmp_path, policy=None, ref=None, **kw):
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=kw.pop("batch", 4),
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        logging_steps=1,
        lr_scheduler_type="constant",
        optim="adamw_torch",
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed=0,
        **kw,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = DPOTrainer(
            model=policy if policy is not None else str(path),
            ref_model=ref,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
        )
    trainer.remove_callback(PrinterCallback)
    return trainer


def _moved(path, seed=1, scale=0.02):
    "The tiny model with noise added to every weight: a policy away from its reference."
    m = load_model(path, device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return m


@pytest.mark.parametrize("fmt", FORMATS)
def test_tokenization_equals_trl(tiny, tmp_path, fmt):
    path, tok = tiny
    rows = FORMATS[fmt]
    trainer = _trainer(path, tok, rows, tmp_path)
    theirs = [{k: r[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for r in trainer.train_dataset]
    assert tokenize_preferences(rows, tok) == theirs
    batch = trainer.data_collator(list(trainer.train_dataset))
    ours = collate_preferences(tokenize_preferences(rows, tok), tok.pad_token_id)
    width = ours["input_ids"].shape[1]  # TRL pads further, to a multiple of 8
    for k in ("input_ids", "attention_mask", "completion_mask"):
        assert torch.equal(batch[k][:, :width], ours[k]) and not batch["attention_mask"][:, width:].any()


def _real_rows(name, n=6):
    ds = load_hh_rlhf("helpful-base") if name == "hh-rlhf" else load_preferences(name)
    return [dict(r) for r in ds.select(range(n))]


@pytest.mark.parametrize("loss_type", DPO_LOSSES)
@pytest.mark.parametrize("data", ["random", "hh-rlhf", "dpo-demo"])
def test_loss_and_metrics_equal_trl(tiny, tmp_path, loss_type, data, request):
    "One batch through TRL's compute_loss and through ours: the loss and every logged metric agree."
    path, tok = tiny
    if data != "random":
        request.getfixturevalue("local_data")
    rows = TOY if data == "random" else _real_rows(data)
    beta, eps = 0.1, 0.1 if loss_type == "robust" else 0.0
    policy, ref = _moved(path), load_model(path, device="cpu").requires_grad_(False)
    trainer = _trainer(
        path,
        tok,
        rows,
        tmp_path,
        policy=policy,
        ref=ref,
        beta=beta,
        loss_type=loss_type,
        label_smoothing=eps,
        max_length=96,
        batch=len(rows),
    )
    batch = trainer.data_collator(list(trainer.train_dataset))
    trainer.model.train()  # TRL files metrics under "train" in train mode (no dropout in the tiny model)
    with torch.no_grad():
        their_loss = trainer.compute_loss(trainer.model, batch).item()
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = collate_preferences(tokenize_preferences(rows, tok, max_length=96), tok.pad_token_id, max_length=96)
    with torch.no_grad():
        lw, ll = completion_logps(policy, ours)
        rw, rl = completion_logps(ref, ours)
    n_w, n_l = ours["completion_mask"].sum(-1).chunk(2)
    our_loss = dpo_loss(lw, ll, rw, rl, beta, loss_type, eps, n_w, n_l).mean().item()
    metrics = preference_metrics(preference_sums(lw, ll, rw, rl, beta), len(lw))
    assert abs(metrics["rewards/margins"]) > 1e-3  # the policy is away from the reference: the metrics are not all 0
    torch.testing.assert_close(our_loss, their_loss, rtol=1e-4, atol=1e-6)
    for k, v in metrics.items():
        torch.testing.assert_close(v, logged[k], rtol=1e-4, atol=1e-5, msg=k)


def test_label_smoothing_does_not_change_trl_sigmoid(tiny, tmp_path):
    "Why DPOSettings refuses label_smoothing with 'sigmoid': TRL 1.16 computes the same loss with and without it."
    path, tok = tiny
    losses = []
    for eps in (0.0, 0.3):
        trainer = _trainer(
            path,
            tok,
            TOY,
            tmp_path,
            policy=_moved(path),
            ref=load_model(path, device="cpu"),
            label_smoothing=eps,
            batch=len(TOY),
        )
        with torch.no_grad():
            losses.append(
                trainer.compute_loss(trainer.model, trainer.data_collator(list(trainer.train_dataset))).item()
            )
    assert losses[0] == losses[1]
    with pytest.raises(ValueError, match="use loss_type='robust'"):
        DPOSettings(label_smoothing=0.3)


STEPS, BATCH, LR, TARGETS = 4, 4, 5e-3, ["q_proj", "v_proj"]


def _lora_rows():
    "16 conversational pairs (4 steps of 4) of different lengths."
    words = "red green blue yellow black white orange purple pink brown gray gold silver violet teal navy".split()
    return [
        dict(
            prompt=USER(f"A color, please ({i})."),
            chosen=BOT(w.title() + "."),
            rejected=BOT("I will not say " + words[-i - 1] + (" today." if i % 2 else ".")),
        )
        for i, w in enumerate(words)
    ]


def _peft_policy(path):
    torch.manual_seed(0)
    return get_peft_model(
        load_model(path, device="cpu"), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0)
    )


def _trl_lora_run(path, tok, tmp_path):
    peft_model = _peft_policy(path)
    trainer = _trainer(
        path, tok, _lora_rows(), tmp_path, policy=peft_model, batch=BATCH, learning_rate=LR, max_steps=STEPS, beta=0.1
    )
    trainer._get_train_sampler = lambda *a, **k: SequentialSampler(
        trainer.train_dataset
    )  # rows in order, as ours with seed=None
    trainer.train()
    log = pd.DataFrame([h for h in trainer.state.log_history if "rewards/margins" in h])
    weights = {
        k.replace("base_model.model.", "").replace(".default", ""): v.detach().clone()
        for k, v in peft_model.named_parameters()
        if "lora_" in k and ".default." in k
    }  # TRL adds a frozen "ref" copy
    return log, weights


def _our_lora_run(path, tok, beta=0.1, ref=None, shared_trunk=True, precompute_ref=False):
    policy = inject_lora(load_model(path, device="cpu"), TARGETS, r=4, alpha=8)
    copy_from_peft(policy, _peft_policy(path))  # PEFT's initial A (B = 0), as on TRL's side
    start = {k: v.detach().clone() for k, v in policy.named_parameters() if "lora_" in k}
    cfg = DPOSettings(
        steps=STEPS,
        batch_size=BATCH,
        lr=LR,
        beta=beta,
        seed=None,
        shared_trunk=shared_trunk,
        precompute_ref=precompute_ref,
    )
    log = pd.DataFrame(train_dpo(policy, _lora_rows(), cfg, tok, ref=ref))
    return log, {k: v.detach() for k, v in policy.named_parameters() if "lora_" in k}, start


def _distance(ours, theirs, start) -> float:
    "|θ_ours − θ_TRL| / |θ_TRL − θ_start| over all adapter weights."
    num = sum(((ours[k] - theirs[k]) ** 2).sum() for k in theirs) ** 0.5
    return (num / sum(((theirs[k] - start[k]) ** 2).sum() for k in theirs) ** 0.5).item()


TOL = 1e-3


@pytest.mark.filterwarnings("ignore")
def test_training_with_lora_equals_trl_step_for_step(tiny, tmp_path):
    path, tok = tiny
    trl_log, theirs = _trl_lora_run(path, tok, tmp_path)
    assert len(trl_log) == STEPS
    distances = {}
    for name, kw in {
        "shared trunk": {},
        "two full passes": dict(shared_trunk=False),
        "precomputed": dict(precompute_ref=True),
    }.items():
        log, ours, start = _our_lora_run(path, tok, **kw)
        for k in (
            "loss",
            "rewards/chosen",
            "rewards/rejected",
            "rewards/accuracies",
            "rewards/margins",
            "logps/chosen",
            "logps/rejected",
        ):
            torch.testing.assert_close(
                torch.tensor(log[k].values), torch.tensor(trl_log[k].values), rtol=1e-3, atol=1e-5, msg=f"{name}: {k}"
            )
        assert log["rewards/margins"].abs().iloc[-1] > 1e-3  # the policy moved away from the reference
        distances[name] = _distance(ours, theirs, start)
    print("relative weight distance to TRL:", distances)
    assert max(distances.values()) < TOL
    # the tolerance has teeth: another β, or another reference, lands far outside it
    _, other_beta, start = _our_lora_run(path, tok, beta=1.0)
    _, other_ref, _ = _our_lora_run(path, tok, ref=_moved(path, scale=0.05).requires_grad_(False), shared_trunk=False)
    teeth = {"β 1.0": _distance(other_beta, theirs, start), "moved reference": _distance(other_ref, theirs, start)}
    print("with one detail changed:", teeth)
    assert min(teeth.values()) > 10 * TOL
