"LoRA equals PEFT: outputs (unmerged, merged, with dropout), scaling, and adapters that load both ways."
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from alignbook.lora import (LoRALinear, copy_from_peft, count_trainable, inject_lora, load_lora, lora_layers, merge,
                            save_lora, unmerge)
from alignbook.models import TINY, load_model

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]
IDS = torch.randint(3, 49152, (2, 9), generator=torch.Generator().manual_seed(0))


def pair(r=4, alpha=8, use_rslora=False, dropout=0.0, kind="causal", **extra):
    "A PEFT model (random A and B) and our model with the same adapter weights."
    theirs = get_peft_model(load_model(TINY, kind=kind, device="cpu"),
                            LoraConfig(r=r, lora_alpha=alpha, target_modules=TARGETS, use_rslora=use_rslora,
                                       lora_dropout=dropout, init_lora_weights=False,
                                       task_type="SEQ_CLS" if kind == "reward" else None, **extra))
    ours = inject_lora(load_model(TINY, kind=kind, device="cpu"), TARGETS, r=r, alpha=alpha, dropout=dropout,
                       use_rslora=use_rslora, modules_to_save=["score"] if kind == "reward" else ())
    copy_from_peft(ours, theirs)
    return ours, theirs


@pytest.mark.parametrize("r,alpha,rs", [(1, 1, False), (4, 8, False), (16, 8, True), (8, 32, True)])
def test_outputs_and_scaling_equal_peft(r, alpha, rs):
    ours, theirs = pair(r, alpha, rs)
    ours.eval(); theirs.eval()
    q = theirs.base_model.model.model.layers[0].self_attn.q_proj
    assert lora_layers(ours)["model.layers.0.self_attn.q_proj"].scaling == q.scaling["default"]
    with torch.no_grad():
        torch.testing.assert_close(ours(IDS).logits, theirs(IDS).logits, rtol=0, atol=1e-6)
        for layer in lora_layers(ours).values(): merge(layer)
        torch.testing.assert_close(ours(IDS).logits, theirs.merge_and_unload()(IDS).logits, rtol=0, atol=1e-5)


def test_dropout_in_training_mode_equals_peft():
    ours, theirs = pair(dropout=0.3)
    ours.train(); theirs.train()
    torch.manual_seed(5); a = ours(IDS).logits
    torch.manual_seed(5); b = theirs(IDS).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_gradients_reach_only_adapters_and_saved_modules():
    ours, theirs = pair(kind="reward")
    ours(IDS).logits.sum().backward()
    for name, p in ours.named_parameters():
        assert (p.grad is not None) == ("lora_" in name or name.startswith("score.")), name
    assert count_trainable(ours)[0] == count_trainable(theirs)[0]


def test_our_adapter_loads_into_peft_and_back(tmp_path):
    ours, _ = pair(kind="reward")
    ours.eval()
    with torch.no_grad():
        ours.score.weight.normal_()  # a trained head that a reload must not lose
        expected = ours(IDS).logits
    save_lora(ours, tmp_path / "ours", task_type="SEQ_CLS")
    def fresh_base():
        "The same base weights as before training, with a freshly randomised head (what a reload starts from)."
        m = load_model(TINY, kind="reward", device="cpu")
        with torch.no_grad(): m.score.weight.normal_()
        return m
    peft_loaded = PeftModel.from_pretrained(fresh_base(), tmp_path / "ours").eval()
    ours_loaded = load_lora(fresh_base(), tmp_path / "ours").eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_loaded(IDS).logits, expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(ours_loaded(IDS).logits, expected, rtol=0, atol=1e-6)


def test_peft_adapter_loads_into_ours(tmp_path):
    _, theirs = pair(kind="causal")
    theirs.eval()
    theirs.save_pretrained(tmp_path / "peft")
    ours = load_lora(load_model(TINY, device="cpu"), tmp_path / "peft").eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(IDS).logits, theirs(IDS).logits, rtol=0, atol=1e-6)


def test_head_that_would_be_lost_is_refused(tmp_path):
    ours = inject_lora(load_model(TINY, kind="reward", device="cpu"), ["q_proj"], r=2)
    ours.score.weight.requires_grad_(True)  # trained, but not declared in modules_to_save
    with pytest.raises(ValueError, match="would not be saved"):
        save_lora(ours, tmp_path / "x")


def test_bad_input():
    base = torch.nn.Linear(4, 4)
    with pytest.raises(ValueError, match="rank r must be > 0"):
        LoRALinear(base, r=0)
    with pytest.raises(ValueError, match="no nn.Linear module matches"):
        inject_lora(load_model(TINY, device="cpu"), ["attention.query"])
    layer = LoRALinear(base, r=2)
    merge(layer)
    with pytest.raises(ValueError, match="already merged"):
        merge(layer)
    unmerge(layer)
    with pytest.raises(ValueError, match="not merged"):
        unmerge(layer)
