"Each silent wrong answer found by trying the library as a user would, now a clear error or a right answer."

import gzip
import json
import math
import warnings

import pytest
import torch

import alignbook.data as data
from alignbook.models import TINY, cache_problem, convert_gguf, load_model, load_tokenizer
from alignbook.policy_gradient import ReinforceSettings, train_reinforce
from alignbook.reward import RewardSettings, cache_features, load_reward_model, tokenize_pairs, train_reward, win_rate
from alignbook.sampling import generate
from alignbook.sft import SFTSettings, freeze_all_but, prepare_sft, top_layers, train_sft
from alignbook.training import TrainConfig

ROWS = [dict(prompt=f"Q{i}:", completion=f" answer number {i}") for i in range(8)]


def test_missing_weights_are_an_error_not_random(tmp_path):
    model = load_model(TINY, device="cpu")
    model.model.layers[0].mlp.up_proj = torch.nn.Sequential(model.model.layers[0].mlp.up_proj)  # renamed key
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="lacks 1 weights"):
        load_model(tmp_path, device="cpu")


def test_convert_gguf_never_deletes_a_users_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an alignbook model cache"):
        convert_gguf(tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_a_truncated_cache_is_detected(tmp_path):
    load_model(TINY, device="cpu").save_pretrained(tmp_path)
    load_tokenizer(TINY).save_pretrained(tmp_path)
    (tmp_path / "alignbook_cache.json").write_text("{}")
    assert cache_problem(tmp_path) is None
    w = tmp_path / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    assert "damaged" in cache_problem(tmp_path)
    (tmp_path / "config.json").unlink()
    assert cache_problem(tmp_path) == "config.json is missing"


def test_gsm8k_from_the_hub_passes_its_config(monkeypatch):
    seen = {}
    monkeypatch.setattr(data, "_source_file", lambda *a: None)
    import datasets

    def fake(hub, **kw):
        seen.update(kw, hub=hub)
        return [dict(question="1+1?", answer="2 #### 2")]

    monkeypatch.setattr(datasets, "load_dataset", fake)
    ds = data.load_gsm8k("test")
    assert seen == dict(hub="openai/gsm8k", name="main", split="test") and ds[0]["final_answer"] == "2"


def test_alpaca_eval_float_preferences():
    rows = [dict(instruction="i", output_1="a", output_2="b", preference=p) for p in (1.9, 1.1, 1.5, 2, 1)]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = data.load_preferences("alpaca-eval-prefs", rows=rows)
    assert [r["chosen"] for r in ds] == ["b", "a", "b", "a"] and "1 ties" in str(w[0].message)


def test_bad_data_files_and_fields_name_the_file_and_row(tmp_path):
    bad = tmp_path / "rows.jsonl.gz"
    bad.write_bytes(gzip.compress(b'{"a": 1}\n')[:-8])
    with pytest.raises(ValueError, match="rows.jsonl.gz: cannot read it"):
        data.read_rows(bad)
    d = tmp_path / "rows.json"
    d.write_text(json.dumps({"a": 1}))
    with pytest.raises(ValueError, match="rows.json: expected a list of rows"):
        data.read_rows(d)
    with pytest.raises(TypeError, match="row 1: field 'output' is a int"):
        data.load_instructions(rows=[dict(instruction="a", output="b"), dict(instruction="a", output=5)])
    with pytest.raises(TypeError, match="row 0: field 'output' is a list"):
        prepare_sft([dict(instruction="a", output=["b"])], load_tokenizer(TINY))


def test_sft_refuses_what_cannot_train():
    tok = load_tokenizer(TINY)
    model = load_model(TINY, device="cpu")
    with pytest.raises(ValueError, match="no training rows"):
        train_sft(model, [], SFTSettings(steps=1), tok)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        SFTSettings(batch_size=0)
    with pytest.raises(ValueError, match="no labelled token"):
        train_sft(model, [dict(input_ids=[5, 6, 7], completion_mask=[0, 0, 0])], SFTSettings(steps=1), tok)
    no_template = load_tokenizer(TINY)
    no_template.chat_template = None
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        prepare_sft([dict(instruction="a", output="b")], no_template)
    with pytest.raises(ValueError, match="no chat template"):
        prepare_sft(
            [dict(messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])], no_template
        )


def test_fp16_is_refused_and_bf16_trains():
    tok = load_tokenizer(TINY)
    with pytest.raises(ValueError, match="float16 training is refused"):
        train_sft(load_model(TINY, device="cpu", dtype=torch.float16), ROWS, SFTSettings(steps=1), tok)
    history = train_sft(load_model(TINY, device="cpu"), ROWS, SFTSettings(steps=2, bf16=True, eval_every=0), tok)
    assert all(math.isfinite(h["loss"]) for h in history)


def test_a_nan_loss_stops_training_before_any_weight_changes():
    tok, model = load_tokenizer(TINY), load_model(TINY, device="cpu")
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    model.model.norm.weight.requires_grad_(False)
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(FloatingPointError, match="step 1: the loss is nan"):
        train_sft(model, ROWS, SFTSettings(steps=3), tok)
    assert all(torch.equal(p, before[n]) or p.isnan().any() for n, p in model.named_parameters())


def test_trainers_leave_global_state_alone():
    tok = load_tokenizer(TINY, padding_side="right")
    policy, ref = load_model(TINY, device="cpu"), load_model(TINY, device="cpu")
    for p in ref.parameters():
        p.requires_grad_(False)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    train_sft(load_model(TINY, device="cpu"), ROWS, SFTSettings(steps=1, eval_every=0), tok)
    train_reinforce(
        policy,
        ["Hi", "Hello"],
        ReinforceSettings(steps=1, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=3),
        tok,
        lambda t, d: [1.0] * len(t),
        ref,
    )
    assert torch.equal(state, torch.random.get_rng_state())
    assert tok.padding_side == "right" and not policy.training


def test_reinforce_refuses_the_policy_as_its_own_reference():
    tok, policy = load_tokenizer(TINY), load_model(TINY, device="cpu")
    with pytest.raises(ValueError, match="reference model is the policy"):
        train_reinforce(policy, ["Hi"], ReinforceSettings(steps=1), tok, lambda t, d: [0.0] * len(t), policy)


def test_reward_checks():
    with pytest.raises(ValueError, match="NaN scores at pairs"):
        win_rate(torch.tensor([1.0, float("nan")]), torch.tensor([0.0, 0.0]))
    rm, tok = load_reward_model(TINY)
    pairs = tokenize_pairs([dict(prompt="Q:", chosen=" yes", rejected=" no")] * 4, tok)
    feats = cache_features(rm, pairs, 1, tok.pad_token_id)
    freeze_all_but(rm, top_layers(rm, 1) + ["score."])
    with pytest.raises(ValueError, match="cached at layer 1, but trained_layers=2"):
        train_reward(rm, feats, RewardSettings(steps=1, trained_layers=2))
    feats[2]["chosen"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="features of pairs \\[2\\] are NaN"):
        train_reward(rm, feats, RewardSettings(steps=1, trained_layers=1))
    with pytest.raises(ValueError, match="pad token is its EOS token"):
        load_model(kind="reward", device="cpu")


def test_generate_defaults_to_transformers_length():
    model, ids = load_model(TINY, device="cpu"), torch.tensor([[5, 6, 7, 8, 9]])
    theirs = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False)
    assert torch.equal(generate(model, ids, eos_token_id=[]), theirs[:, :25]) and theirs.shape[1] <= 25
    assert generate(model, ids, max_length=9, eos_token_id=[]).shape[1] == 9


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox"])
def test_other_architectures_train(arch):
    "GPT-2 and GPT-NeoX layouts: top_layers, SFT and reward training on token pairs."
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GPT2Config, GPTNeoXConfig

    cfg = (
        GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=49152, pad_token_id=0, eos_token_id=2)
        if arch == "gpt2"
        else GPTNeoXConfig(
            num_hidden_layers=2,
            hidden_size=32,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=49152,
            pad_token_id=0,
            eos_token_id=2,
        )
    )
    tok = load_tokenizer(TINY)
    lm = AutoModelForCausalLM.from_config(cfg)
    freeze_all_but(lm, top_layers(lm, 1))
    assert len(train_sft(lm, ROWS, SFTSettings(steps=2, eval_every=0), tok)) == 2
    cfg.num_labels = 1
    rm = AutoModelForSequenceClassification.from_config(cfg)
    tok.pad_token = "<|endoftext|>"
    freeze_all_but(rm, top_layers(rm, 1) + ["score."])
    history = train_reward(
        rm, [dict(prompt="Q:", chosen=" a good answer", rejected=" no")] * 4, RewardSettings(steps=2, batch_size=2), tok
    )
    assert len(history) == 2 and all(math.isfinite(h["loss"]) for h in history)


def test_config_validation():
    for bad, msg in [
        (dict(lr=-1), "lr must be"),
        (dict(lr_scheduler="step"), "lr_scheduler"),
        (dict(max_grad_norm=0), "max_grad_norm"),
        (dict(grad_accum_steps=0), "grad_accum_steps"),
    ]:
        with pytest.raises(ValueError, match=msg):
            TrainConfig(**bad)
    with pytest.raises(ValueError, match="samples_per_prompt must be >= 2"):
        ReinforceSettings(samples_per_prompt=1)


def test_concurrent_first_loads_convert_once(tmp_path):
    """Two processes loading the default model into an empty cache: one converts under the lock, the other waits and
    reads."""
    import os
    import subprocess
    import sys

    code = "from alignbook.models import load_model; m = load_model(device='cpu'); print('loaded', m.num_parameters())"
    env = {**os.environ, "ALIGNBOOK_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    assert all("loaded 134515008" in o for o, _ in outs)
    assert sum("de-quantizing GGUF tensors" in e for _, e in outs) == 1  # converted once
    assert cache_problem(tmp_path / "SmolLM2-135M-Instruct") is None
