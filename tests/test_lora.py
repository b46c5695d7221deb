"LoRA equals PEFT: outputs (unmerged, merged, with dropout), scaling, and adapters that load both ways."

import json
import tempfile

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from alignbook.lora import (
    LoRALinear,
    copy_from_peft,
    count_trainable,
    inject_lora,
    load_lora,
    lora_layers,
    merge,
    merge_lora,
    save_lora,
    unmerge,
)
from alignbook.models import TINY, load_model

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]
IDS = torch.randint(3, 49152, (2, 9), generator=torch.Generator().manual_seed(0))


def pair(r=4, alpha=8, use_rslora=False, dropout=0.0, kind="causal", **extra):
    "A PEFT model (random A and B) and our model with the same adapter weights."
    theirs = get_peft_model(
        load_model(TINY, kind=kind, device="cpu"),
        LoraConfig(
            r=r,
            lora_alpha=alpha,
            target_modules=TARGETS,
            use_rslora=use_rslora,
            lora_dropout=dropout,
            init_lora_weights=False,
            task_type="SEQ_CLS" if kind == "reward" else None,
            **extra,
        ),
    )
    ours = inject_lora(
        load_model(TINY, kind=kind, device="cpu"),
        TARGETS,
        r=r,
        alpha=alpha,
        dropout=dropout,
        use_rslora=use_rslora,
        modules_to_save=["score"] if kind == "reward" else (),
    )
    copy_from_peft(ours, theirs)
    return ours, theirs


@pytest.mark.parametrize("r,alpha,rs", [(1, 1, False), (4, 8, False), (16, 8, True), (8, 32, True)])
def test_outputs_and_scaling_equal_peft(r, alpha, rs):
    ours, theirs = pair(r, alpha, rs)
    ours.eval()
    theirs.eval()
    q = theirs.base_model.model.model.layers[0].self_attn.q_proj
    assert lora_layers(ours)["model.layers.0.self_attn.q_proj"].scaling == q.scaling["default"]
    with torch.no_grad():
        torch.testing.assert_close(ours(IDS).logits, theirs(IDS).logits, rtol=0, atol=1e-6)
        for layer in lora_layers(ours).values():
            merge(layer)
        torch.testing.assert_close(ours(IDS).logits, theirs.merge_and_unload()(IDS).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["causal", "reward"])
def test_merge_lora_equals_peft_merge_and_unload(kind):
    "The same plain model: the same parameter names, the same merged weights (the reward head kept as trained)."
    ours, theirs = pair(kind=kind)  # PEFT keeps a SEQ_CLS model's score head as a module to save
    with torch.no_grad():
        if kind == "reward":  # a trained head, not the one the base model starts with
            theirs.base_model.model.score.modules_to_save["default"].weight.mul_(3)
            copy_from_peft(ours, theirs)
        mine, peft_merged = merge_lora(ours).state_dict(), theirs.merge_and_unload().state_dict()
    assert not lora_layers(ours) and not any("lora_" in k for k in mine)
    assert mine.keys() == peft_merged.keys()
    for k in mine:
        torch.testing.assert_close(mine[k], peft_merged[k], rtol=0, atol=1e-6, msg=k)
    untouched, q = load_model(TINY, kind=kind, device="cpu").state_dict(), "model.layers.0.self_attn.q_proj.weight"
    assert (mine[q] - untouched[q]).abs().max() > 1e-3  # the update is in the weights
    if kind == "reward":
        torch.testing.assert_close(mine["score.weight"], 3 * untouched["score.weight"], rtol=0, atol=1e-6)


def test_dropout_in_training_mode_equals_peft():
    ours, theirs = pair(dropout=0.3)
    ours.train()
    theirs.train()
    torch.manual_seed(5)
    a = ours(IDS).logits
    torch.manual_seed(5)
    b = theirs(IDS).logits
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
        with torch.no_grad():
            m.score.weight.normal_()
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
    with pytest.raises(ValueError, match="no nn.Linear or Conv1D module matches"):
        inject_lora(load_model(TINY, device="cpu"), ["attention.query"])
    layer = LoRALinear(base, r=2)
    merge(layer)
    with pytest.raises(ValueError, match="already merged"):
        merge(layer)
    unmerge(layer)
    with pytest.raises(ValueError, match="not merged"):
        unmerge(layer)


def _peft_and_ours(model_fn, config, **ours_kw):
    "A PEFT model with random adapters, and ours loaded from PEFT's saved adapter."
    theirs = get_peft_model(model_fn(), config)
    with torch.no_grad():
        for n, p in theirs.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    with tempfile.TemporaryDirectory() as d:
        theirs.save_pretrained(d)
        ours = load_lora(model_fn(), d)
    return theirs, ours


def test_alpha_and_rank_patterns_equal_peft():
    "PEFT's per-module ranks and alphas: before, load_lora ignored alpha_pattern (logits off by 0.25-0.95)."
    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj"],
        rank_pattern={"layers.0.self_attn.q_proj": 2},
        alpha_pattern={"v_proj": 32},
        init_lora_weights=False,
    )
    theirs, ours = _peft_and_ours(lambda: load_model(TINY, device="cpu"), cfg)
    ids = torch.tensor([[1, 5, 9, 200, 3000]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, rtol=1e-5, atol=1e-5)
    assert ours.model.layers[0].self_attn.q_proj.r == 2 and ours.model.layers[1].self_attn.v_proj.alpha == 32


@pytest.mark.parametrize("targets", [r".*layers\.1\.self_attn\.(q|k)_proj", "all-linear"])
def test_regex_and_all_linear_targets_select_what_peft_selects(targets):
    theirs, ours = _peft_and_ours(
        lambda: load_model(TINY, device="cpu"), LoraConfig(r=2, target_modules=targets, init_lora_weights=False)
    )
    peft_names = {
        n.replace("base_model.model.", "")
        for n, m in theirs.named_modules()
        if hasattr(m, "lora_A") and isinstance(m.lora_A, torch.nn.ModuleDict)
    }
    assert set(lora_layers(ours)) == peft_names and peft_names
    ids = torch.tensor([[1, 5, 9, 200]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, rtol=1e-5, atol=1e-5)


def test_gpt2_conv1d_layers_equal_peft():
    "GPT-2 keeps its projections in Conv1D (weight stored in x out): wrapped, merged and loaded like PEFT does."
    from transformers import GPT2Config, GPT2LMHeadModel

    make = lambda: GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=32)).eval()
    torch.manual_seed(0)
    base = make().state_dict()

    def model_fn():
        m = make()
        m.load_state_dict(base)
        return m

    theirs, ours = _peft_and_ours(
        model_fn, LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False)
    )
    ids = torch.tensor([[1, 5, 9, 20]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, rtol=1e-5, atol=1e-5)
        before = ours(ids).logits
        for layer in lora_layers(ours).values():
            merge(layer)
        torch.testing.assert_close(ours(ids).logits, before, rtol=1e-5, atol=1e-5)


def test_a_failed_load_leaves_the_model_as_it_was(tmp_path):
    src = inject_lora(load_model(TINY, device="cpu"), ["q_proj"], r=4)
    save_lora(src, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    cfg["r"] = 2  # the weights are rank 4: loading must fail
    (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
    model = load_model(TINY, device="cpu")
    names = [n for n, _ in model.named_parameters()]
    with pytest.raises(ValueError, match=r"does not fit this model \(size mismatch"):
        load_lora(model, tmp_path)
    assert [n for n, _ in model.named_parameters()] == names and not lora_layers(model)
    assert all(p.requires_grad for p in model.parameters())
    cfg["r"], cfg["use_dora"] = 4, True
    (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="does not implement"):
        load_lora(model, tmp_path)
    assert not lora_layers(model)


def test_adapters_on_a_bf16_model_are_float32():
    model = inject_lora(load_model(TINY, device="cpu", dtype=torch.bfloat16), ["q_proj"], r=2)
    layer = next(iter(lora_layers(model).values()))
    assert layer.lora_A.weight.dtype == torch.float32 and layer.base_layer.weight.dtype == torch.bfloat16
    assert model(torch.tensor([[1, 2, 3]])).logits.dtype == torch.bfloat16
