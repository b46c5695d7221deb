"Loaders return TRL's standard formats, drop and count bad rows, and fail clearly without data."

import gzip
import json
import warnings
from collections import Counter

import pytest
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st
from trl.data_utils import extract_prompt, is_conversational, maybe_apply_chat_template

from alignbook import data
from alignbook.data import (
    clean_rows,
    load_hh_rlhf,
    load_instructions,
    load_preferences,
    read_rows,
    split_by_key,
    split_dialogue,
)
from alignbook.models import load_tokenizer


def test_hh_split_reconstructs_both_dialogues_and_agrees_with_trl(local_data):
    raw = read_rows(local_data / "hh_rlhf_test" / "helpful-base.test.jsonl.gz")
    same_as_trl = 0
    for r in raw:
        ours = split_dialogue(r["chosen"], r["rejected"])
        assert ours["prompt"] + ours["chosen"] == r["chosen"] and ours["prompt"] + ours["rejected"] == r["rejected"]
        trl = extract_prompt({"chosen": r["chosen"], "rejected": r["rejected"]})
        assert trl["prompt"].startswith(ours["prompt"])  # TRL cuts at the common prefix; we cut back to the turn start
        if trl["prompt"].endswith(data.ASSISTANT):
            assert trl["prompt"] == ours["prompt"]
            same_as_trl += 1
    assert same_as_trl > len(raw) // 2


def test_hh_counts_dropped_rows(local_data):
    with pytest.warns(UserWarning, match=r"dropped 6 of 2354 rows: 4 empty rejected, 2 chosen == rejected"):
        ds = load_hh_rlhf("helpful-base")
    raw = read_rows(local_data / "hh_rlhf_test" / "helpful-base.test.jsonl.gz")
    assert sum(r["chosen"] == r["rejected"] for r in raw) == 2  # counted straight from the file
    assert len(ds) == 2348 and not is_conversational(ds[0])


def test_dpo_demo_is_trl_conversational_and_renders(local_data):
    ds = load_preferences("dpo-demo")
    assert len(ds) == 300 and is_conversational(ds[0])
    out = maybe_apply_chat_template(ds[0], load_tokenizer())
    assert out["prompt"].endswith("<|im_start|>assistant\n") and out["chosen"].endswith("<|im_end|>\n")


def test_alpaca_eval_prefs_orientation(local_data):
    raw = read_rows(local_data / "alpaca_eval_gpt4_prefs" / data.SOURCES["alpaca-eval-prefs"].files["ppo-human"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = load_preferences("alpaca-eval-prefs", "ppo-human")
    kept = [r for r in raw if str(r["preference"]).startswith(("1", "2"))]
    assert len(ds) == len(kept) == 797
    for r, row in zip(kept, ds):
        winner, loser = ("output_1", "output_2") if str(r["preference"]).startswith("1") else ("output_2", "output_1")
        assert (row["chosen"], row["rejected"]) == (r[winner], r[loser])


def test_synthetic_pairwise_schema_offline():
    rows = [
        dict(prompt="p1", chosen="good", rejected="bad"),
        dict(prompt="p2", chosen="", rejected="bad"),
        dict(prompt="p3", chosen="same", rejected="same"),
        dict(prompt="p4", chosen="ok"),
    ]
    with pytest.warns(UserWarning, match="dropped 3 of 4"):
        ds = load_preferences("synthetic-pairwise", rows=rows)
    assert ds.to_list() == [dict(prompt="p1", chosen="good", rejected="bad")]


def test_instructions_input_may_be_empty_but_output_may_not():
    rows = [
        dict(instruction="Add", input="1 2", output="3"),
        dict(instruction="Say hi", output="hi"),
        dict(instruction="Say hi", input="", output=" "),
        dict(input="x", output="y"),
    ]
    with pytest.warns(UserWarning, match="1 empty output, 1 missing instruction"):
        ds = load_instructions(rows=rows)
    assert ds["input"] == ["1 2", ""]


def test_no_local_copy_and_no_hub_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(data, "data_dir", lambda: None)
    monkeypatch.setitem(
        data.SOURCES, "alpaca-demo", data.DataSource("llamafactory_demo", {"train": "alpaca_en_demo.json"})
    )
    with pytest.raises(FileNotFoundError, match="no local copy.*no hub name.*llamafactory_demo/alpaca_en_demo.json"):
        load_instructions("alpaca-demo")


def test_every_dataset_of_the_book_has_a_remote_copy():
    # a fork of the book on GitHub runs online with no data directory: every file needs a hub id or a URL
    for name, src in data.SOURCES.items():
        for key in src.files or [None]:
            assert src.hub is not None or key in src.urls, (name, key)
    assert all(
        "/cd543a149df89434d8a54582c0151c0b945c3d20/" in u for u in data.SOURCES["alpaca-eval-prefs"].urls.values()
    )


def test_remote_copies_are_read_from_the_right_place(monkeypatch, tmp_path):
    import datasets

    seen = []

    def fake(hub, **kw):
        seen.append(dict(hub=hub, **kw))
        return (
            [dict(instruction="Say hi", input="", output="hi")]
            if "alpaca" in kw.get("data_files", "")
            else [
                dict(
                    conversations=[{"from": "human", "value": "Hi"}],
                    chosen={"from": "gpt", "value": "Hello"},
                    rejected={"from": "gpt", "value": "Go away"},
                )
            ]
        )

    monkeypatch.setattr(data, "data_dir", lambda: None)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    assert load_instructions("alpaca-demo")[0]["output"] == "hi"
    assert load_preferences("dpo-demo")[0]["chosen"] == [{"role": "assistant", "content": "Hello"}]
    assert seen == [
        dict(hub="llamafactory/demo_data", data_files=f, split="train")
        for f in ("alpaca_en_demo.json", "dpo_en_demo.json")
    ]
    urls = []

    def download(url, dataset):
        urls.append(url)
        f = tmp_path / "annotations.json"
        f.write_text(json.dumps([dict(instruction="i", output_1="a", output_2="b", preference=2)]))
        return f

    monkeypatch.setattr(data, "_download", download)
    assert load_preferences("alpaca-eval-prefs", "oasst-rlhf")[0]["chosen"] == "b"
    assert urls == [data.SOURCES["alpaca-eval-prefs"].urls["oasst-rlhf"]]
    assert urls[0].endswith("/results/oasst-rlhf-llama-33b/alpaca_eval_gpt4/annotations.json")


def test_data_dir_missing_a_dataset_falls_back_to_the_remote_copy(monkeypatch, tmp_path):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach the hub")

    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))  # a data directory without gsm8k/
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(FileNotFoundError, match="no local copy.*'openai/gsm8k'.*holds gsm8k/test.jsonl.gz"):
        data.load_gsm8k("test")


def test_unreachable_hub_is_a_clear_error(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach the hub")

    monkeypatch.setattr(data, "data_dir", lambda: None)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(FileNotFoundError, match="Offline, set ALIGNBOOK_DATA"):
        load_preferences("synthetic-pairwise")


def test_bad_data_dir_and_names(monkeypatch, tmp_path):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        data.data_dir()
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    with pytest.raises(KeyError, match="unknown dataset"):
        load_preferences("imagenet")
    with pytest.raises(KeyError, match="no subset/split"):
        load_hh_rlhf("helpful-extra")


def test_read_rows_formats(tmp_path):
    rows = [{"a": 1}, {"a": 2}]
    (tmp_path / "x.json").write_text(json.dumps(rows))
    (tmp_path / "x.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n\n")
    with gzip.open(tmp_path / "x.jsonl.gz", "wt") as f:
        f.write("\n".join(map(json.dumps, rows)))
    with gzip.open(tmp_path / "x.json.gz", "wt") as f:
        f.write(json.dumps(rows))
    for name in ["x.json", "x.jsonl", "x.jsonl.gz", "x.json.gz"]:
        assert read_rows(tmp_path / name) == rows


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([f"prompt {i}" for i in range(30)]), min_size=2, max_size=120), st.floats(0.05, 0.95))
def test_split_by_key_properties(prompts, test_size):
    ds = Dataset.from_dict({"prompt": prompts, "i": list(range(len(prompts)))})
    s = split_by_key(ds, test_size)
    assert len(s["train"]) + len(s["test"]) == len(ds)
    assert not set(s["train"]["prompt"]) & set(s["test"]["prompt"])
    again = split_by_key(ds.shuffle(seed=0), test_size)
    assert sorted(again["test"]["i"]) == sorted(s["test"]["i"])


def test_split_by_key_fraction_and_bad_input():
    ds = Dataset.from_dict({"prompt": [f"q{i}" for i in range(5000)]})
    assert abs(len(split_by_key(ds, 0.2)["test"]) / 5000 - 0.2) < 0.02
    with pytest.raises(ValueError):
        split_by_key(ds, 1.0)
    with pytest.raises(KeyError):
        split_by_key(ds, 0.1, key="question")


def test_clean_rows_counts_every_reason():
    rows = [dict(a="x", b="y"), dict(a="x", b="x"), dict(a="", b="y"), dict(b="y"), dict(a=[], b="y")]
    kept, dropped = clean_rows(rows, ["a", "b"], distinct=("a", "b"))
    assert kept == [dict(a="x", b="y")]
    assert dropped == Counter({"a == b": 1, "empty a": 2, "missing a": 1})
