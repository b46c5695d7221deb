"""`alignbook pipeline` end to end on the tiny model: the report's table, metrics.json, adapters that load in PEFT,
reward
models that load in transformers; resuming; errors that name the stage; the command line, chat, and two processes."""

import io
import json
import math
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
import trl
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from trl import get_dataset

from alignbook import pipeline
from alignbook.models import TINY, load_model, load_tokenizer
from alignbook.pipeline import (
    PipelineError,
    chat,
    chat_compare,
    load_policy,
    load_scorer,
    run_pipeline,
    settings_for,
    stage_fingerprint,
)

POLICIES = ["base", "SFT", "PPO", "DPO"]
QUIET = dict(log=lambda *a, **k: None)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "tiny"
    t0 = time.perf_counter()
    metrics = run_pipeline(settings_for("tiny"), out, preset="tiny", **QUIET)
    return out, metrics, time.perf_counter() - t0


def _table(report: str, header: str = "| policy | reward model |") -> list[list[str]]:
    "The cells of report.md's table whose header starts with `header` (the rows after the header)."
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows


def test_end_to_end(tiny_run):  # no time limit: a busy machine is not a failure (timings live in benchmarks/)
    out, metrics, _ = tiny_run
    rows = _table((out / "report.md").read_text())
    assert [r[0] for r in rows] == POLICIES
    assert list(metrics["policies"]) == POLICIES
    for name, cells in zip(POLICIES, rows):  # the table shows metrics.json's numbers
        m = metrics["policies"][name]
        assert (
            cells[1] == f"{m['reward']:.3f} ± {m['reward_ci']:.3f}"
            and cells[2] == f"{m['judge']:.3f} ± {m['judge_ci']:.3f}"
        )
        assert cells[5] == f"{m['kl']:.2f}" and cells[6] == f"{m['tokens']:.1f}"
        assert all(math.isfinite(v) for k, v in m.items() if k != "sample")
        n, z, w = metrics["held_out_prompts"], 1.96, m["win_rate"]  # Wilson's interval, written out independently
        shrink = 1 + z * z / n
        centre, half = (w + z * z / (2 * n)) / shrink, z * math.sqrt(w * (1 - w) / n + z * z / (4 * n * n)) / shrink
        assert (m["win_low"], m["win_high"]) == pytest.approx((centre - half, centre + half))
        if name != "SFT":
            assert cells[4] == f"{m['win_rate']:.3f} [{m['win_low']:.3f}, {m['win_high']:.3f}]"
    assert metrics["policies"]["SFT"]["kl"] == 0.0 and metrics["policies"]["SFT"]["win_rate"] == 0.5
    assert metrics["held_out_prompts"] == 4 and 0 < metrics["policies"]["PPO"]["tokens"] <= 8
    assert set(metrics["stages"]) == {"sft", "reward", "ppo", "dpo", "report"}
    assert all(s["seconds"] > 0 for s in metrics["stages"].values())
    assert metrics["stages"]["reward"]["held_out_pairs"] == 16
    for plot in ("training.png", "reward_vs_kl.png"):
        assert (out / plot).stat().st_size > 10_000 and f"]({plot})" in (out / "report.md").read_text()
    answers = json.loads((out / "report" / "answers.json").read_text())["answers"]
    assert {k: len(v) for k, v in answers.items()} == {p: 8 for p in POLICIES}  # 4 prompts × 2 answers


def test_the_report_opens_with_a_verdict_paired_against_sft(tiny_run):
    out, metrics, _ = tiny_run
    report = (out / "report.md").read_text()
    assert report.splitlines()[2] == "## Verdict" and report.index("## Verdict") < report.index("## Every policy")
    answers = json.loads((out / "report" / "answers.json").read_text())["answers"]

    def per_prompt(policy, col):  # written out again: each prompt's mean over its answers
        by = {}
        for r in answers[policy]:
            by.setdefault(r["prompt"], []).append(r[col])
        return [sum(v) / len(v) for _, v in sorted(by.items())]

    verdict = _table(report, "| policy | judge − SFT |")
    assert [r[0] for r in verdict] == ["base", "PPO", "DPO"]
    for name, cells in zip(["base", "PPO", "DPO"], verdict):
        for col, (shown, says) in zip(("judge", "reward"), (cells[1:3], cells[3:5])):
            d = [a - b for a, b in zip(per_prompt(name, col), per_prompt("SFT", col))]
            mean = sum(d) / len(d)
            half = 1.96 * math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d))
            assert metrics["vs_sft"][name][col][:2] == pytest.approx([mean, half])
            assert shown == f"{mean:+.3f} ± {half:.3f}"
            assert says == ("above SFT" if mean > half else "below SFT" if mean < -half else "not separable from SFT")
    assert any(w.startswith("One seed (seed = 0)") for w in metrics["warnings"])
    assert any("The judge is not independent of the reward model" in w for w in metrics["warnings"])
    assert report.count("> **Warning.**") == len(metrics["warnings"])
    assert "## Where the policies differ most" in report and report.count("**Prompt ") == 3


@pytest.mark.parametrize("stage", ["sft", "ppo", "dpo"])
def test_every_adapter_loads_in_peft(tiny_run, stage):
    out = tiny_run[0]
    assert json.loads((out / stage / "adapter_config.json").read_text())["base_model_name_or_path"] == TINY
    ids = load_tokenizer(TINY)(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        theirs = PeftModel.from_pretrained(load_model(TINY, device="cpu"), out / stage)(**ids).logits
        ours = load_policy(settings_for("tiny"), out / stage, "cpu", trainable=False)(**ids).logits
        base = load_model(TINY, device="cpu")(**ids).logits
    assert (theirs - ours).abs().max() < 1e-5
    assert (ours - base).abs().max() > 1e-4  # the adapter was trained: the test could tell a missing one


@pytest.mark.parametrize("name", ["reward_model", "judge"])
def test_reward_models_load_with_transformers(tiny_run, name):
    folder = tiny_run[0] / "reward" / name
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    assert model.config.num_labels == 1 and tok.pad_token_id != tok.eos_token_id
    enc = tok(["\n\nHuman: Hi\n\nAssistant: Hello" + tok.eos_token], return_tensors="pt")
    ours, _ = load_scorer(folder, "cpu")
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, ours(**enc).logits)


def test_reward_model_and_judge_differ(tiny_run):
    weights = [load_scorer(tiny_run[0] / "reward" / n, "cpu")[0].score.weight for n in ("reward_model", "judge")]
    assert not torch.equal(*weights)  # trained on different pairs


def test_resuming_skips_what_is_done_and_reruns_what_changed(tiny_run, tmp_path):
    out = shutil.copytree(tiny_run[0], tmp_path / "copy")
    lines = []
    again = run_pipeline(settings_for("tiny"), out, log=lines.append)
    assert len(lines) == 5 and all("skipped" in line for line in lines)
    assert again["policies"] == tiny_run[1]["policies"]
    lines = []
    run_pipeline(settings_for("tiny", dpo_beta=0.2), out, log=lines.append)
    assert [line.split("]")[1].split(":")[0].strip() for line in lines if "changed since it ran" in line] == [
        "dpo",
        "report",
    ]
    lines = []
    run_pipeline(settings_for("tiny", dpo_beta=0.2), out, force=True, log=lines.append)
    assert not any("skipped" in line for line in lines)


def test_fingerprints_follow_what_each_stage_reads():
    def all_of(cfg):
        fp = {}
        for name in pipeline.STAGES:
            fp[name] = stage_fingerprint(cfg, name, fp)
        return fp

    base = all_of(settings_for("tiny"))
    changed = lambda **kw: {k for k, v in all_of(settings_for("tiny", **kw)).items() if v != base[k]}
    assert changed(sft_steps=3) == {"sft", "ppo", "dpo", "report"}
    assert changed(rm_steps=3) == {"reward", "ppo", "report"}
    assert changed(eval_prompts=3) == {"report"}
    assert changed(max_new_tokens=9) == {"ppo", "report"}
    assert changed(pairs=17) == set(pipeline.STAGES)
    assert changed(device="cpu") == set()
    assert changed(report_to="tensorboard") == set()  # tracking changes no result: --force logs the stages done


def test_a_stage_failing_halfway_keeps_the_others(tmp_path, monkeypatch):
    out = tmp_path / "run"

    def failing_ppo(cfg, data, folder, *args):
        (folder / "half-written.bin").write_bytes(b"x")
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setitem(pipeline.STAGE_FUNCTIONS, "ppo", failing_ppo)
    with pytest.raises(
        PipelineError, match=r"(?s)stage 'ppo' failed after .*RuntimeError: out of memory.*Kept: sft, reward \("
    ):
        run_pipeline(settings_for("tiny"), out, **QUIET)
    assert (out / "sft" / "done.json").exists() and (out / "reward" / "done.json").exists()
    assert not (out / "ppo").exists() and "out of memory" in (out / "error.log").read_text()
    monkeypatch.undo()
    lines = []
    run_pipeline(settings_for("tiny"), out, log=lines.append)
    assert [line.split("]")[1].split(":")[0].strip() for line in lines if "skipped" in line] == ["sft", "reward"]
    assert not (out / ".ppo.partial").exists() and (out / "report.md").exists()


def test_bad_input_gets_a_message_that_names_the_fix(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(PipelineError, match="is a file: pass a folder"):
        run_pipeline(settings_for("tiny"), tmp_path / "a_file")
    with pytest.raises(PipelineError, match="stage 'setup' failed before it started: ModelNotAvailable"):
        run_pipeline(settings_for("tiny", model=str(tmp_path / "no-such-model")), tmp_path / "out1", **QUIET)
    with pytest.raises(
        PipelineError, match="stage 'setup' failed.*the dpo stage's settings: dpo_lr must be"
    ):  # every trainer's settings checked first
        run_pipeline(settings_for("tiny", dpo_lr=float("nan")), tmp_path / "out2", **QUIET)
    import datasets

    def offline(*a, **k):
        raise ConnectionError("no network")

    (tmp_path / "data").mkdir()
    monkeypatch.setenv("ALIGNBOOK_DATA", str(tmp_path / "data"))  # a data directory without hh-rlhf
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(
        PipelineError,
        match=r"(?s)stage 'data' failed.*set ALIGNBOOK_DATA to a folder that holds "
        r"hh_rlhf_test/helpful-base.test.jsonl.gz",
    ):
        run_pipeline(settings_for("tiny"), tmp_path / "out3", **QUIET)


def _command(*args, stdin=None, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "alignbook.pipeline", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def test_command_line(tiny_run, tmp_path):
    assert shutil.which("alignbook"), "the console script is installed by pip install (pyproject's [project.scripts])"
    out = tmp_path / "cli"
    r = _command("pipeline", "--preset", "tiny", "--out", str(out), "--set", "ppo_steps=1", "--set", "eval_prompts=2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"report: {out / 'report.md'}" in r.stdout
    assert json.loads((out / "settings.json").read_text())["settings"]["ppo_steps"] == 1
    assert json.loads((out / "metrics.json").read_text())["held_out_prompts"] == 2
    r = _command("pipeline", "--preset", "tiny", "--out", str(out), "--set", "ppo_step=1")
    assert r.returncode == 1 and "unknown settings ['ppo_step']" in r.stderr
    r = _command(
        "pipeline", "--model", "no-such-org/no-such-model", "--out", str(tmp_path / "x"), env={"HF_HUB_OFFLINE": "1"}
    )
    assert r.returncode == 1 and "stage 'setup' failed" in r.stderr and "Offline, call without a name" in r.stderr


def test_chat_streams_replies(tiny_run):
    screen = io.StringIO()
    talk = chat(
        tiny_run[0] / "ppo",
        stdin=io.StringIO("Hello!\n/reset\nName a color.\n/exit\n"),
        stdout=screen,
        max_new_tokens=6,
        seed=0,
    )
    assert [m["role"] for m in talk] == ["user", "assistant"]  # /reset dropped the first exchange
    assert talk[0]["content"] == "Name a color." and talk[1]["content"] in screen.getvalue()
    assert screen.getvalue().count("bot> ") == 2
    r = _command("chat", "--adapter", str(tiny_run[0] / "dpo"), "--max-new-tokens", "5", "--seed", "0", stdin="Hi\n")
    assert r.returncode == 0 and r.stdout.count("bot> ") == 1, r.stderr[-2000:]
    r = _command("chat", "--adapter", str(tiny_run[0]), stdin="")
    assert r.returncode == 1 and "holds no adapter_config.json" in r.stderr


def test_chat_compare_gives_each_policy_its_own_answer(tiny_run):
    "Each answer is the one `chat` gives with that policy and seed: putting an adapter in and out again leaks nothing."
    out, flags = tiny_run[0], dict(max_new_tokens=6, temperature=1.0, top_p=1.0, top_k=0)
    said = chat_compare(out, stdin=io.StringIO("Name a color.\n"), stdout=io.StringIO(), seed=3, **flags)
    assert list(said[0]["answers"]) == POLICIES
    for i, (name, folder) in enumerate(zip(POLICIES, [None, "sft", "ppo", "dpo"])):
        alone = chat(
            out / folder if folder else None,
            model=TINY,
            stdin=io.StringIO("Name a color.\n"),
            stdout=io.StringIO(),
            seed=3 + i,
            **flags,
        )
        assert said[0]["answers"][name] == alone[-1]["content"], name
    assert len(set(said[0]["answers"].values())) > 1  # the policies differ, so the equality above can fail
    r = _command("chat", "--compare", str(out), "--max-new-tokens", "4", stdin="Hi\n/exit\n")
    assert r.returncode == 0, r.stderr[-2000:]
    assert all(f"[{name}] " in r.stdout for name in POLICIES)
    assert "To match it: --temperature 1 --top-p 1 --top-k 0 --max-new-tokens 8" in r.stdout
    r = _command(
        "chat",
        "--compare",
        str(out),
        "--temperature",
        "1",
        "--top-p",
        "1",
        "--top-k",
        "0",
        "--max-new-tokens",
        "8",
        stdin="",
    )
    assert r.returncode == 0 and "Sampling as the report evaluated" in r.stdout
    r = _command("chat", "--compare", str(out / "ppo"), stdin="")
    assert r.returncode == 1 and "holds no settings.json" in r.stderr
    r = _command("chat", "--compare", str(out), "--adapter", str(out / "ppo"), stdin="")
    assert r.returncode == 2 and "not allowed with argument" in r.stderr


STAGE_CONFIGS = {"sft": "SFTConfig", "reward": "RewardConfig", "dpo": "DPOConfig"}


def _trl_recipe(out, stage, *changes):
    "TRL's own parser (what `trl STAGE --config` runs) on the run's trl/STAGE.yaml, with command-line `changes`."
    types = (trl.ScriptArguments, getattr(trl, STAGE_CONFIGS[stage]), trl.ModelConfig, trl.DatasetMixtureConfig)
    return trl.TrlParser(types).parse_args_and_config(["--config", str(out / "trl" / f"{stage}.yaml"), *changes])


def test_trl_recipes_hold_each_stages_settings_and_rows(tiny_run):
    out, cfg = tiny_run[0], settings_for("tiny")
    ours = pipeline.trainer_settings(cfg)
    targets = json.loads((out / "sft" / "adapter_config.json").read_text())["target_modules"]
    for stage in STAGE_CONFIGS:
        _, args, model, data = _trl_recipe(out, stage)
        s = ours[stage]
        got = (args.max_steps, args.per_device_train_batch_size, args.gradient_accumulation_steps, args.learning_rate)
        assert got == (s.steps, s.batch_size, s.grad_accum_steps, s.lr), stage
        assert (args.lr_scheduler_type.value, args.warmup_steps, args.weight_decay) == ("constant", 0, 0.0)
        assert (args.max_grad_norm, args.seed, args.bf16, args.optim.value) == (1.0, cfg.seed, False, "adamw_torch")
        rows = get_dataset(data)["train"]
        assert len(rows) == cfg.pairs
        assert set(rows.column_names) == {"sft": {"prompt", "completion"}}.get(stage, {"prompt", "chosen", "rejected"})
        if stage == "reward":  # chapter 4's reward model trains its top layers, not an adapter
            assert not model.use_peft
        else:
            lora = (model.use_peft, model.lora_r, model.lora_alpha, model.lora_dropout, model.lora_target_modules)
            assert lora == (True, cfg.lora_r, 2 * cfg.lora_r, 0.0, targets)
    _, sft, _, _ = _trl_recipe(out, "sft")
    assert (sft.max_length, sft.completion_only_loss) == (cfg.sft_max_length, True)
    _, dpo, dpo_model, _ = _trl_recipe(out, "dpo")
    assert (dpo.beta, dpo.loss_type, dpo.max_length, dpo.precompute_ref_log_probs) == (
        cfg.dpo_beta,
        ["sigmoid"],
        cfg.dpo_max_length,
        True,
    )
    assert dpo_model.model_name_or_path == str((out / "trl" / "sft-merged").resolve())
    assert "trl dpo --config" in (out / "trl" / "README.md").read_text()


def test_trl_runs_the_recipes(tiny_run, tmp_path):
    "TRL's own SFT and DPO scripts run the recipes (one step each); DPO starts from the SFT policy alignbook exported."
    from trl.scripts import dpo, sft

    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)  # the run folder is moved: its recipes are written again where it now is
    run_pipeline(settings_for("tiny"), run, preset="tiny", **QUIET)
    checkpoint = tmp_path / "tiny-checkpoint"  # the tiny model is alignbook's own name: TRL loads a folder
    load_model(TINY, device="cpu").save_pretrained(checkpoint)
    load_tokenizer(TINY).save_pretrained(checkpoint)
    steps = ["--max_steps", "1", "--use_cpu", "true"]
    sft.main(*_trl_recipe(run, "sft", "--model_name_or_path", str(checkpoint), *steps))
    assert (run / "trl" / "sft-out" / "adapter_model.safetensors").exists()
    (run / "trl" / "sft-merged").mkdir()
    assert pipeline.main(["export", "--adapter", str(run / "sft"), "--out", str(run / "trl" / "sft-merged")]) == 0
    dpo.main(*_trl_recipe(run, "dpo", *steps))
    assert (run / "trl" / "dpo-out" / "adapter_model.safetensors").exists()
    run_pipeline(settings_for("tiny"), run, preset="tiny", **QUIET)  # writing the recipes again keeps what TRL made
    assert (run / "trl" / "sft-merged" / "config.json").exists() and (run / "trl" / "dpo-out").is_dir()


def test_report_to_tensorboard_logs_every_trainer(tmp_path):
    "--set report_to=tensorboard: one TensorBoard run per trainer in its stage's folder, holding its history."
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tracked"
    r = _command("pipeline", "--preset", "tiny", "--out", str(out), "--set", "report_to=tensorboard")
    assert r.returncode == 0, r.stderr[-3000:]
    runs = {  # the TensorBoard run's folder: the history the stage saved
        "sft/tensorboard": "sft/history.json",
        "reward/tensorboard/reward_model": "reward/reward_model_history.json",
        "reward/tensorboard/judge": "reward/judge_history.json",
        "ppo/tensorboard": "ppo/history.json",
        "dpo/tensorboard": "dpo/history.json",
    }
    for run, saved in runs.items():
        events, history = EventAccumulator(str(out / run)), json.loads((out / saved).read_text())
        events.Reload()
        assert [e.step for e in events.Scalars("loss")] == [row["step"] for row in history], run
        assert [e.value for e in events.Scalars("loss")] == pytest.approx([row["loss"] for row in history], rel=1e-6)
    assert "objective/kl" in EventAccumulator(str(out / "ppo" / "tensorboard")).Reload().Tags()["scalars"]


def test_two_processes(tiny_run, tmp_path):
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun is not installed")
    out = tmp_path / "ddp"
    r = subprocess.run(
        [
            "torchrun",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29531",
            "-m",
            "alignbook.pipeline",
            "pipeline",
            "--preset",
            "tiny",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert [line for line in r.stdout.splitlines() if line.startswith("report: ")] == [f"report: {out / 'report.md'}"]
    assert r.stdout.count("[5/5] report: base") == 1  # the main process logs and reports; the other one waited
    assert [row[0] for row in _table((out / "report.md").read_text())] == POLICIES
    for stage in ("sft", "dpo"):  # both processes trained: each step saw twice the rows
        two = json.loads((out / stage / "history.json").read_text())
        one = json.loads((tiny_run[0] / stage / "history.json").read_text())
        assert [r["epoch"] for r in two] == [2 * r["epoch"] for r in one]
    for stage in ("sft", "ppo", "dpo"):
        PeftModel.from_pretrained(load_model(TINY, device="cpu"), out / stage)


@pytest.mark.parametrize("preset", ["quick", "course", "gpu"])
def test_presets_have_the_data_they_ask_for(preset):
    from alignbook.pipeline import pipeline_data, pipeline_tokenizers, trainer_settings

    cfg = settings_for(preset)
    trainer_settings(cfg)  # every trainer accepts the preset's settings
    tok, rtok = pipeline_tokenizers(cfg.model)
    data = pipeline_data(cfg, tok, rtok)  # enough pairs fit max_pair_tokens in the held-in split
    assert (len(data["pairs"]), len(data["judge_pairs"]), len(data["eval_prompts"])) == (
        cfg.pairs,
        cfg.judge_pairs,
        cfg.eval_prompts,
    )
    assert cfg.test_pairs is None or len(data["test_pairs"]) == cfg.test_pairs
