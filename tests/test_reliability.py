"""Nothing lost, nothing silently wrong: the pipeline's run folder (its mark, its lock, outputs checked before reuse,
the data and model in the fingerprint), settings read as their types, and the trainers' and the command line's
refusals of input they would misread. Each test failed before these checks existed."""

import copy
import gzip
import io
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from filelock import FileLock
from transformers import GPT2Config

from alignbook.data import data_dir
from alignbook.dpo import DPOSettings, precompute_reference, tokenize_preferences, train_dpo
from alignbook.lora import inject_lora, save_lora
from alignbook.models import TINY, load_model, load_tokenizer
from alignbook.pipeline import LOCK, RUN_MARK, PipelineError, _setting, chat, main, run_pipeline, settings_for
from alignbook.policy_gradient import ReinforceSettings, train_reinforce
from alignbook.ppo import PPOSettings, train_ppo
from alignbook.reward import RewardSettings, train_reward
from alignbook.sft import SFTSettings, train_sft
from alignbook.training import TrainConfig

QUIET = dict(log=lambda *a, **k: None)
TINY_TARGETS = [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]


def ran(lines: list[str]) -> set[str]:
    "The stages a run's log says it ran (every stage that ran logs its time last: '[i/5] name: 1.2 s')."
    return {line.split("]")[1].split(":")[0].strip() for line in lines if line.endswith(" s") and "earlier" not in line}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reliability") / "tiny"
    run_pipeline(settings_for("tiny"), out, **QUIET)
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    return shutil.copytree(finished_run, tmp_path / "run")


# ---------------------------------------------------------------- the run folder


def test_out_refuses_a_folder_it_did_not_make(tmp_path):
    d = tmp_path / "D"
    (d / "report").mkdir(parents=True)
    (d / "sft").mkdir()
    (d / "report" / "figures.csv").write_text("x")
    (d / "sft" / "mine.bin").write_bytes(b"mine")
    (d / "report.md").write_text("mine")
    with pytest.raises(PipelineError, match="is not empty and is not an alignbook run folder"):
        run_pipeline(settings_for("tiny"), d, **QUIET)
    assert (d / "report" / "figures.csv").read_text() == "x" and (d / "report.md").read_text() == "mine"
    assert (d / "sft" / "mine.bin").read_bytes() == b"mine" and not (d / RUN_MARK).exists()


def test_a_run_folder_carries_its_mark(finished_run):
    assert json.loads((finished_run / RUN_MARK).read_text())["made_by"] == "alignbook pipeline"


@pytest.mark.parametrize(
    "damage, stage, says",
    [
        ("truncate", "sft", "adapter_model.safetensors has 100 bytes"),
        ("empty", "sft", "adapter_model.safetensors has 0 bytes"),
        ("delete", "reward", "reward/reward_model/model.safetensors is missing"),
        ("dpo over sft", "sft", "same size, other bytes"),
    ],
)
def test_damaged_outputs_are_found_and_rerun(run_copy, damage, stage, says):
    target = {
        "sft": run_copy / "sft" / "adapter_model.safetensors",
        "reward": run_copy / "reward" / "reward_model" / "model.safetensors",
    }[stage]
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:100])
    elif damage == "empty":
        target.write_bytes(b"")
    elif damage == "delete":
        target.unlink()
    else:
        shutil.copy(run_copy / "dpo" / "adapter_model.safetensors", target)
    lines = []
    run_pipeline(settings_for("tiny"), run_copy, log=lines.append)
    first = next(line for line in lines if line.startswith(f"[{1 if stage == 'sft' else 2}/5] {stage}"))
    assert "its outputs changed since it ran" in first and says in first, lines
    assert stage in ran(lines)
    lines = []
    run_pipeline(settings_for("tiny"), run_copy, log=lines.append)  # and then it is whole again: no loop
    assert ran(lines) == set() and all("skipped" in line for line in lines), lines


def test_a_stage_rerun_with_other_weights_reruns_what_read_them(run_copy):
    done = json.loads((run_copy / "sft" / "done.json").read_text())
    done["digest"] = "0" * 16  # as if SFT had rerun and written other weights than PPO and DPO started from
    (run_copy / "sft" / "done.json").write_text(json.dumps(done))
    lines = []
    run_pipeline(settings_for("tiny"), run_copy, log=lines.append)
    assert ran(lines) == {"ppo", "dpo", "report"}, lines


def test_a_missing_done_json_reruns_the_stage(run_copy):
    (run_copy / "ppo" / "done.json").unlink()
    lines = []
    run_pipeline(settings_for("tiny"), run_copy, log=lines.append)
    assert "[3/5] ppo: its done.json is missing or unreadable: running it again" in lines
    assert "ppo" in ran(lines)


def test_a_users_file_in_a_stage_folder_is_never_deleted(run_copy):
    (run_copy / "dpo" / "notes.txt").write_text("mine")
    with pytest.raises(PipelineError, match=r"dpo holds files the dpo stage did not write \(notes.txt\)"):
        run_pipeline(settings_for("tiny", dpo_beta=0.2), run_copy, **QUIET)
    assert (run_copy / "dpo" / "notes.txt").read_text() == "mine"


def test_two_runs_on_one_folder(run_copy):
    lock = FileLock(str(run_copy / LOCK))
    lock.acquire(timeout=0)  # another run holds the folder
    try:
        with pytest.raises(PipelineError, match="is in use by another alignbook pipeline run"):
            run_pipeline(settings_for("tiny"), run_copy, **QUIET)
    finally:
        lock.release()
    run_pipeline(settings_for("tiny"), run_copy, **QUIET)  # free again


def test_a_second_process_is_refused_while_a_run_holds_the_folder(run_copy):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from filelock import FileLock; l = FileLock({str(run_copy / LOCK)!r}); "
            "l.acquire(); print('held', flush=True); import sys; sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(PipelineError, match="is in use by another"):
            run_pipeline(settings_for("tiny"), run_copy, **QUIET)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_other_data_reruns_the_stages_that_read_it(run_copy, tmp_path, monkeypatch):
    if data_dir() is None or not (data_dir() / "hh_rlhf_test" / "helpful-base.test.jsonl.gz").exists():
        pytest.skip("needs hh-rlhf's helpful-base file in ALIGNBOOK_DATA")
    source = data_dir() / "hh_rlhf_test" / "helpful-base.test.jsonl.gz"
    other = tmp_path / "data" / "hh_rlhf_test"
    other.mkdir(parents=True)
    rows = gzip.open(source, "rt").read().splitlines()
    with gzip.open(other / "helpful-base.test.jsonl.gz", "wt") as f:
        f.write("\n".join(rows[200:]) + "\n")  # other rows: other pairs and prompts
    monkeypatch.setenv("ALIGNBOOK_DATA", str(tmp_path / "data"))
    lines = []
    run_pipeline(settings_for("tiny"), run_copy, log=lines.append)
    assert ran(lines) == {"sft", "reward", "ppo", "dpo", "report"}, lines
    assert all("settings or inputs changed" in line for line in lines if "running it again" in line)


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "text, value",
    [("bf16=False", False), ("bf16=true", True), ("test_pairs=None", None), ("sft_lr=1e-3", 1e-3), ("pairs=12", 12)],
)
def test_set_reads_each_value_as_its_type(text, value):
    name, got = _setting(text)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(
    "text, says",
    [
        ("pairs=true", "pairs takes an integer"),
        ("sft_lr=abc", "sft_lr takes a number"),
        ("seed=1.5", "seed takes an integer"),
        ("bf16=maybe", "bf16 takes true or false"),
    ],
)
def test_set_refuses_a_value_of_another_type(text, says, capsys):
    with pytest.raises(ValueError, match=says):
        _setting(text)
    assert main(["pipeline", "--preset", "tiny", "--set", text]) == 1
    assert says in capsys.readouterr().err


def test_settings_name_the_pipelines_fields():
    with pytest.raises(ValueError, match="subsets must name hh-rlhf subsets"):
        settings_for("tiny", subsets=",")
    with pytest.raises(ValueError, match="bf16 must be bool, got 'False'"):
        settings_for("tiny", bf16="False")
    with pytest.raises(ValueError, match=r"ppo_prompts × ppo_samples = 3 must be a multiple of 2") as e:
        settings_for("tiny", ppo_prompts=3, ppo_samples=1)
    assert "num_minibatches" not in str(e.value)
    from alignbook.pipeline import trainer_settings

    with pytest.raises(ValueError, match="the dpo stage's settings: dpo_beta must be") as e:
        trainer_settings(settings_for("tiny", dpo_beta=0.0))
    assert "DPOSettings" not in str(e.value)


@pytest.mark.parametrize("cls", [TrainConfig, SFTSettings, RewardSettings, DPOSettings, PPOSettings, ReinforceSettings])
def test_every_trainers_settings_check_types(cls):
    with pytest.raises(ValueError, match=r"steps must be int, got 1.5 \(float\)"):
        cls(steps=1.5)
    with pytest.raises(ValueError, match="bf16 must be bool, got 'False'"):
        cls(bf16="False")


def test_ppo_settings_refuse_what_would_train_wrong():
    with pytest.raises(ValueError, match="vf_coef must be >= 0"):
        PPOSettings(vf_coef=-0.1)
    with pytest.raises(ValueError, match="kl_horizon must exceed 0.2 × the 8 samples"):
        PPOSettings(kl_target=1.0, kl_horizon=1)
    with pytest.raises(ValueError, match="kl_horizon must exceed"):
        PPOSettings(kl_horizon=0)


# ---------------------------------------------------------------- every trainer refuses a string or one dict


def test_every_trainer_refuses_a_string_or_one_row(tiny):
    policy, ref, tok = tiny
    lora = inject_lora(load_model(TINY, device="cpu"), TINY_TARGETS, r=4)
    no_reward = lambda texts, finished: [0.0] * len(texts)  # noqa: E731 (refused before any reply is scored)
    row = dict(prompt="Hi", chosen=" Hello.", rejected=" Go away.")
    calls = {
        "train_sft": lambda d: train_sft(lora, d, SFTSettings(steps=1), tok),
        "train_dpo": lambda d: train_dpo(lora, d, DPOSettings(steps=1), tok),
        "train_reward": lambda d: train_reward(
            load_model(TINY, kind="reward", device="cpu", pad_token_id=0), d, RewardSettings(steps=1), tok
        ),
        "train_ppo": lambda d: train_ppo(policy, d, PPOSettings(steps=1, prompts_per_step=2), tok, no_reward, ref),
        "train_reinforce": lambda d: train_reinforce(policy, d, ReinforceSettings(steps=1), tok, no_reward, ref),
    }
    for name, call in calls.items():
        with pytest.raises(TypeError, match=f"{name}: .* not a list"):
            call("Tell me a joke")
        if name in ("train_sft", "train_dpo", "train_reward"):
            with pytest.raises(TypeError, match=rf"{name}: rows is one dict .* pass \[row\]"):
                call(row)


# ---------------------------------------------------------------- DPO's rows and reference log-probs


@pytest.fixture
def dpo_setup():
    tok = load_tokenizer(TINY)
    rows = [
        dict(prompt=f"Question {i}: what is {i} plus {i}?", chosen=f" It is {2 * i}.", rejected=f" Maybe {i}.")
        for i in range(4)
    ]
    policy = inject_lora(load_model(TINY, device="cpu"), TINY_TARGETS, r=4)
    return policy, tokenize_preferences(rows, tok), tok


def test_reference_logps_that_no_longer_apply_are_refused(dpo_setup):
    policy, rows, tok = dpo_setup
    pre = precompute_reference(policy, rows, tok.pad_token_id, batch_size=2)  # max_length=None
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    with pytest.raises(ValueError, match="computed for max_length=None.*training uses max_length=6"):
        train_dpo(policy, pre, DPOSettings(steps=1, batch_size=2, max_length=6), tok)
    cut = precompute_reference(policy, rows, tok.pad_token_id, batch_size=2, max_length=6)
    with pytest.raises(
        ValueError, match="truncation='keep_start', and training uses max_length=6, truncation='keep_end'"
    ):
        train_dpo(policy, cut, DPOSettings(steps=1, batch_size=2, max_length=6, truncation="keep_end"), tok)
    swapped = [dict(r, chosen_ids=r["rejected_ids"], rejected_ids=r["chosen_ids"]) for r in pre]
    with pytest.raises(ValueError, match="computed for its token ids"):
        train_dpo(policy, swapped, DPOSettings(steps=1, batch_size=2, max_length=None), tok)
    other = [
        dict(a, ref_chosen_logps=b["ref_chosen_logps"], ref_logps_for=b["ref_logps_for"])
        for a, b in zip(pre, pre[1:] + pre[:1])
    ]
    with pytest.raises(ValueError, match="computed for its token ids"):
        train_dpo(policy, other, DPOSettings(steps=1, batch_size=2, max_length=None), tok)
    ref = copy.deepcopy(load_model(TINY, device="cpu")).requires_grad_(False)
    with pytest.raises(ValueError, match="ref= was given too"):
        train_dpo(policy, pre, DPOSettings(steps=1, batch_size=2, max_length=None), tok, ref=ref)
    assert all(torch.equal(p, before[n]) for n, p in policy.named_parameters())
    history = train_dpo(
        policy, pre, DPOSettings(steps=1, batch_size=2, max_length=1024), tok
    )  # nothing cut: they apply
    assert history[0]["loss"] == pytest.approx(0.6931, abs=1e-3)


@pytest.mark.parametrize(
    "row, says",
    [
        (dict(prompt="Hi", chosen=" Hello."), r"row 1: no 'rejected' field \(the row has \['chosen', 'prompt'\]\)"),
        (
            dict(prompt="Hi", chosen=[{"role": "assistant", "content": "Hello."}], rejected=" No."),
            "row 1: it mixes text and messages",
        ),
        (
            dict(
                prompt=[{"role": "user", "content": "Hi"}],
                chosen=[{"role": "assistant"}],
                rejected=[{"role": "assistant", "content": "No."}],
            ),
            r"row 1: chosen\[0\] is not a message with text 'role' and 'content' \(keys \['role'\]\)",
        ),
    ],
)
def test_preference_rows_with_errors_are_named(dpo_setup, row, says):
    policy, _, tok = dpo_setup
    good = dict(prompt="Hi", chosen=" Hello.", rejected=" Go away.")
    with pytest.raises((TypeError, ValueError), match=says):
        train_dpo(policy, [good, row], DPOSettings(steps=1), tok)
    with pytest.raises((TypeError, ValueError), match=says):
        train_reward(
            load_model(TINY, kind="reward", device="cpu", pad_token_id=0), [good, row], RewardSettings(steps=1), tok
        )


# ---------------------------------------------------------------- the command line


def test_out_paths_that_cannot_be_a_run_folder(tmp_path, finished_run):
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(PipelineError, match="is a link to .*which does not exist"):
        run_pipeline(settings_for("tiny"), tmp_path / "dangling", **QUIET)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(PipelineError, match="a_file is a file, so no folder can be made under it"):
        run_pipeline(settings_for("tiny"), tmp_path / "a_file" / "run", **QUIET)
    run = shutil.copytree(finished_run, tmp_path / "run")
    shutil.move(run / "dpo", tmp_path / "elsewhere")
    (run / "dpo").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PipelineError, match="dpo is a link"):
        run_pipeline(settings_for("tiny"), run, **QUIET)
    assert (tmp_path / "elsewhere" / "done.json").exists()


def test_model_names_that_are_not_a_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ../../etc names no folder from here
    (tmp_path / "not_a_model").mkdir()
    for model, says in [
        (str(tmp_path / "missing"), "no folder"),
        ("../../etc", "no folder '../../etc'"),
        (str(tmp_path / "not_a_model"), "is a folder without config.json"),
    ]:
        assert main(["pipeline", "--model", model, "--out", str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err
        assert says in err and "Repo id must be in the form" not in err, err
    GPT2Config(n_layer=2, n_embd=64, n_head=4).save_pretrained(tmp_path / "gpt2")
    assert main(["pipeline", "--model", str(tmp_path / "gpt2"), "--out", str(tmp_path / "out")]) == 1
    assert "is a gpt2 model; the pipeline supports the Llama family" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapter") / "ppo"
    model = inject_lora(load_model(TINY, device="cpu"), TINY_TARGETS, r=4)
    save_lora(model, folder, task_type="CAUSAL_LM")
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(config | dict(base_model_name_or_path=TINY)))
    return folder


def _chat(adapter, *flags, stdin="Hi\n"):
    screen = io.StringIO()
    chat(adapter, stdin=io.StringIO(stdin), stdout=screen, max_new_tokens=3, seed=0, **dict(flags))
    return screen.getvalue()


@pytest.mark.parametrize(
    "damage, says",
    [
        ("truncate", "adapter_model.safetensors cannot be read"),
        ("config", "adapter_config.json is not valid JSON"),
        ("mismatch", "does not fit this model (size mismatch"),
    ],
)
def test_chat_names_a_damaged_adapter(tiny_adapter, tmp_path, damage, says, capsys):
    folder = shutil.copytree(tiny_adapter, tmp_path / "adapter")
    if damage == "truncate":
        weights = folder / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:200])
    elif damage == "config":
        (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4,')
    else:  # trained on the tiny model, loaded onto the offline SmolLM2
        config = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(json.dumps(config | dict(base_model_name_or_path=None)))
    with pytest.raises((ValueError, FileNotFoundError), match=says.replace("(", r"\(")):
        _chat(folder)
    assert main(["chat", "--adapter", str(folder)]) == 1
    assert says in capsys.readouterr().err


def test_chat_temperature_zero(tiny_adapter, capsys):
    with pytest.raises(ValueError, match="for greedy decoding, pass --greedy") as e:
        _chat(tiny_adapter, ("temperature", 0.0))
    assert "do_sample" not in str(e.value)
    assert _chat(tiny_adapter, ("temperature", 0.0), ("greedy", True)).count("bot> ") == 1


def test_chat_reads_a_line_that_is_not_utf8(tiny_adapter):
    r = subprocess.run(
        [sys.executable, "-m", "alignbook.pipeline", "chat", "--adapter", str(tiny_adapter), "--max-new-tokens", "3"],
        input=b"caf\xe9 \xff\xfe\n",
        capture_output=True,
        timeout=300,
        env={**os.environ},
    )
    assert r.returncode == 0 and r.stdout.decode().count("bot> ") == 1, r.stderr.decode()[-2000:]
