"""`alignbook export`: an adapter merged into its base is a plain checkpoint that transformers loads, with the base's
tokenizer and chat template and the logits of base + adapter; bad folders are refused and nothing of the user's lost."""

import contextlib
import io
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignbook.lora import inject_lora, load_lora, lora_layers, save_lora
from alignbook.models import TINY, load_model, load_tokenizer
from alignbook.pipeline import main

IDS = torch.randint(3, 49152, (2, 9), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    "An adapter with B drawn at random (so merging changes the weights) that names its base, as the pipeline's do."
    folder = tmp_path_factory.mktemp("export") / "policy"
    model = inject_lora(load_model(TINY, device="cpu"), ["q_proj", "v_proj", "down_proj"], r=4, alpha=8, seed=0)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.normal_(std=0.5, generator=torch.Generator().manual_seed(1))
    save_lora(model, folder, task_type="CAUSAL_LM")
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(config | dict(base_model_name_or_path=TINY)))
    return folder


def export(*args) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(["export", *map(str, args)])
    return status, err.getvalue()


def test_the_merged_model_loads_in_transformers_with_base_plus_adapter_logits(adapter, tmp_path):
    status, err = export("--adapter", adapter, "--out", tmp_path / "merged")
    assert status == 0, err
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in k for k in plain.state_dict())
    with torch.no_grad():
        adapted = load_lora(load_model(TINY, device="cpu"), adapter)(IDS).logits
        base = load_model(TINY, device="cpu")(IDS).logits
        got = plain(IDS).logits
    assert (adapted - base).abs().max() > 0.1  # the adapter changes the model, so equality below means something
    torch.testing.assert_close(got, adapted, rtol=0, atol=1e-5)
    tok, theirs = load_tokenizer(TINY), AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert theirs.chat_template == tok.chat_template
    chat = [{"role": "user", "content": "Name a color."}]
    assert theirs.apply_chat_template(chat, add_generation_prompt=True) == tok.apply_chat_template(
        chat, add_generation_prompt=True
    )
    made = json.loads((tmp_path / "merged" / "alignbook_export.json").read_text())
    assert made["dtype"] == "float32" and made["adapter"] == str(adapter)


def test_bfloat16_export(adapter, tmp_path):
    assert export("--adapter", adapter, "--out", tmp_path / "bf16", "--dtype", "bfloat16")[0] == 0
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype="auto")
    assert {p.dtype for p in plain.parameters()} == {torch.bfloat16}


def test_a_folder_in_use_is_refused_and_kept(adapter, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    status, err = export("--adapter", adapter, "--out", mine)
    assert status == 1 and "is not empty" in err and "--out" in err
    assert [f.name for f in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"
    status, err = export("--adapter", adapter, "--out", mine / "notes.txt")
    assert status == 1 and "is a file" in err
    assert sorted(f.name for f in tmp_path.iterdir()) == ["mine"]  # no staging folder left behind


def test_what_is_not_a_policy_adapter_is_refused_by_name(adapter, tmp_path):
    status, err = export("--adapter", tmp_path, "--out", tmp_path / "x")
    assert status == 1 and "holds no adapter_config.json" in err and str(tmp_path) in err
    reward = tmp_path / "reward_adapter"
    reward.mkdir()
    config = json.loads((adapter / "adapter_config.json").read_text()) | dict(task_type="SEQ_CLS")
    (reward / "adapter_config.json").write_text(json.dumps(config))
    status, err = export("--adapter", reward, "--out", tmp_path / "y")
    assert status == 1 and "SEQ_CLS adapter" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
