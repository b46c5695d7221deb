"""Each trainer's short run — the tiny model and SmolLM2, a few steps, fixed seeds — against its history and trained
weights as recorded (`tests/recorded/trainer_runs.json`) before the trainers were restructured into named stages.

The file holds one recording per platform. On a platform that has one (the same torch, CPU capability, CPU flags and
thread count) the comparison is bitwise: every logged number and a sha256 of every trained weight. Elsewhere the same
torch build still rounds differently (other kernels for another CPU, another cache size), so the numbers are compared to
the first recording within `CROSS_PLATFORM`: measured between two machines that both report AVX512 and 2 threads, the
largest gaps were 1.9e-5 absolute in a logged number and 6.4e-5 relative in a weight sum; a learning rate off by 1%
moves the weight sum by 1.9e-3 relative (`test_the_comparison_can_fail`).

The first recording came from the trainers before the restructuring. The second machine's recording was checked
against that code (commit 3d0ab48) on that machine: bitwise equal in 11 of 12 runs, and in `ppo_rm_tiny` the same
weights with one clip decision of 48 falling the other way (a ratio on the clip boundary).
Record again only when a change is meant to change the arithmetic: `python tests/test_recorded_runs.py --record`
(replaces this platform's recording; on a new platform, adds one), or `--record NAME ...` for the runs that a change
touched: they are replaced on this platform and marked `stale` on the others, where they are then compared, within
`CROSS_PLATFORM`, to this platform's new recording. SFT's two runs were recorded again so, when its loss began to
project the vocabulary only at labelled positions: on a third AVX512 machine, the old and the new code were both run,
and of the 12 runs only those two changed, each within `CROSS_PLATFORM` of the old code's numbers (that machine's
recording holds all 12)."""

import copy
import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

from alignbook.dpo import DPOSettings, train_dpo
from alignbook.lora import inject_lora
from alignbook.models import TINY, load_model, load_tokenizer
from alignbook.policy_gradient import ReinforceSettings, train_reinforce
from alignbook.ppo import PPOSettings, train_ppo
from alignbook.reward import RewardSettings, train_reward
from alignbook.sft import SFTSettings, json_format_rows, train_sft

RECORD = Path(__file__).parent / "recorded" / "trainer_runs.json"
TIMINGS = {"tokens_per_second", "generation_seconds"}  # wall-clock: not part of the arithmetic
PROMPTS = ["Name a color:", "Hello", "What is 2 plus 2?", "Say something kind."]
PAIRS = [
    dict(prompt=f"Question {i}: what is {i} plus {i}?", chosen=f" It is {2 * i}.", rejected=f" Maybe {i + 1}, or so.")
    for i in range(8)
]


CROSS_PLATFORM = dict(history=dict(rtol=1e-3, atol=1e-4), weight_sum=dict(rtol=5e-4, atol=1e-7))


def cpu_flags() -> str:
    "A short digest of the CPU's feature flags (Linux's /proc/cpuinfo; empty elsewhere)."
    try:
        line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags"))
    except (OSError, StopIteration):
        return ""
    return hashlib.sha256(" ".join(sorted(line.split(":", 1)[1].split())).encode()).hexdigest()[:16]


def platform() -> dict:
    cpu = torch.backends.cpu.get_cpu_capability()
    return dict(torch=torch.__version__, cpu=cpu, cpu_flags=cpu_flags(), threads=torch.get_num_threads())


def length_reward(texts, finished):
    return [len(t) / 10 for t in texts]


def with_lora(model, layers=(0, 1), r=4):
    torch.manual_seed(0)  # LoRA's A draws from the global RNG
    return inject_lora(
        model, [f"layers.{i}.self_attn.{p}" for i in layers for p in ("q_proj", "v_proj")], r=r, alpha=2 * r
    )


def weights(model) -> dict:
    "sha256 of the trained weights' bytes (name order), and their float64 sum for the cross-platform comparison."
    named = sorted((n, p.detach().float().contiguous()) for n, p in model.named_parameters() if p.requires_grad)
    h = hashlib.sha256()
    for n, p in named:
        h.update(n.encode() + p.numpy().tobytes())
    return dict(sha256=h.hexdigest(), sum=sum(float(p.double().sum()) for _, p in named))


def run(name: str) -> dict:
    "One recorded run: the history (timings dropped) and the trained weights."
    torch.manual_seed(0)  # PPO's value head draws from the global RNG
    real = name.endswith("_real")
    tok = load_tokenizer(None if real else TINY)
    tok.pad_token = "<|endoftext|>"  # distinct from EOS (SmolLM2's pads with EOS)
    base = load_model(None if real else TINY, device="cpu")
    kind = name.removesuffix("_real").removesuffix("_tiny")
    layers = (28, 29) if real else (0, 1)
    if kind == "sft":
        model = with_lora(base, layers) if real else base
        history = train_sft(model, json_format_rows(8, 0), SFTSettings(steps=2, batch_size=2, lr=1e-3), tok)
    elif kind == "reward":
        model = load_model(None if real else TINY, kind="reward", device="cpu", seed=1, pad_token_id=tok.pad_token_id)
        model = with_lora(model, layers) if real else model
        history = train_reward(model, PAIRS, RewardSettings(steps=2, batch_size=2, lr=1e-3), tok)
    elif kind == "reinforce":
        ref, model = copy.deepcopy(base).requires_grad_(False), with_lora(base, layers)
        cfg = ReinforceSettings(steps=2, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=6, lr=1e-3)
        history = train_reinforce(model, PROMPTS, cfg, tok, length_reward, ref)
    elif kind in ("ppo", "ppo_rm"):
        ref, model = copy.deepcopy(base).requires_grad_(False), with_lora(base, layers)
        cfg = PPOSettings(steps=2, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=6, lr=1e-3, ppo_epochs=2)
        if kind == "ppo":
            history = train_ppo(model, PROMPTS, cfg, tok, length_reward, ref)
        else:
            rm = load_model(TINY, kind="reward", device="cpu", seed=1, pad_token_id=tok.pad_token_id).requires_grad_(
                False
            )
            vm = load_model(TINY, kind="reward", device="cpu", seed=2, pad_token_id=tok.pad_token_id)
            cfg = PPOSettings(**{**cfg.__dict__, "kl_target": 0.5, "kl_horizon": 100, "whiten_rewards": True})
            history = train_ppo(model, PROMPTS, cfg, tok, ref=ref, reward_model=rm, value_model=vm)
    elif kind in ("dpo", "dpo_pre"):
        model = with_lora(base, layers)
        cfg = DPOSettings(steps=2, batch_size=2, lr=1e-3, precompute_ref=kind == "dpo_pre")
        history = train_dpo(model, PAIRS, cfg, tok)
    else:
        raise KeyError(name)
    return dict(history=[{k: v for k, v in row.items() if k not in TIMINGS} for row in history], weights=weights(model))


RUNS = ["sft_tiny", "reward_tiny", "reinforce_tiny", "ppo_tiny", "ppo_rm_tiny", "dpo_tiny", "dpo_pre_tiny"]
RUNS += ["sft_real", "reward_real", "reinforce_real", "ppo_real", "dpo_real"]


def recordings() -> list[dict]:
    return json.loads(RECORD.read_text())["recordings"]


def recorded(name: str) -> tuple[dict, bool]:
    """This platform's recording of run `name` and True (compare bitwise); else, or where that recording is stale (a
    change meant to change the arithmetic was recorded elsewhere since), the first fresh recording's and False."""
    every = recordings()
    here = [r for r in every if r["platform"] == platform() and name not in r.get("stale", []) and name in r["runs"]]
    if here:
        return here[0]["runs"][name], True
    return next(r for r in every if name not in r.get("stale", []) and name in r["runs"])["runs"][name], False


def assert_matches(got: dict, want: dict, bitwise: bool):
    "`got` equals the recorded run `want`: bitwise, or (another platform) within `CROSS_PLATFORM`, weights by sums."
    assert [r.keys() for r in got["history"]] == [r.keys() for r in want["history"]], "the logged metric names changed"
    if bitwise:
        assert got["history"] == want["history"]  # floats compare exactly
        assert got["weights"]["sha256"] == want["weights"]["sha256"]
    else:
        torch.testing.assert_close(got["history"], want["history"], **CROSS_PLATFORM["history"])
        torch.testing.assert_close(got["weights"]["sum"], want["weights"]["sum"], **CROSS_PLATFORM["weight_sum"])


@pytest.mark.parametrize("name", RUNS)
def test_run_equals_the_recording(name):
    want, bitwise = recorded(name)
    assert_matches(run(name), want, bitwise)


def test_the_comparison_can_fail():
    "One detail off, a learning rate of 1.01e-3 for 1e-3, and both comparisons (bitwise and cross-platform) fail."
    want = recorded("sft_tiny")[0]
    tok = load_tokenizer(TINY)
    tok.pad_token = "<|endoftext|>"
    torch.manual_seed(0)
    model = load_model(TINY, device="cpu")
    history = train_sft(model, json_format_rows(8, 0), SFTSettings(steps=2, batch_size=2, lr=1.01e-3), tok)
    got = dict(history=[{k: v for k, v in r.items() if k not in TIMINGS} for r in history], weights=weights(model))
    assert abs(history[0]["loss"] - want["history"][0]["loss"]) < 1e-6  # the first loss is before any update
    for bitwise in (True, False):
        with pytest.raises(AssertionError):
            assert_matches(got, want, bitwise)


if __name__ == "__main__" and sys.argv[1:2] == ["--record"]:
    names = sys.argv[2:] or RUNS  # the runs a change touched, or all of them
    if unknown := set(names) - set(RUNS):
        sys.exit(f"no recorded run named {sorted(unknown)}; the runs are {RUNS}")
    RECORD.parent.mkdir(exist_ok=True)
    every = recordings() if RECORD.exists() else []
    here = next((r for r in every if r["platform"] == platform()), None)
    if here is None:  # a new platform: record every run, so that all of them compare bitwise here
        here = dict(platform=platform(), runs={n: run(n) for n in RUNS if n not in names})
        every.append(here)
    for name in names:
        here["runs"][name] = run(name)
    here["stale"] = [n for n in here.get("stale", []) if n not in names]
    for other in every:
        if other is not here and names != RUNS:
            other["stale"] = sorted(set(other.get("stale", [])) | set(names))
    if not here["stale"]:
        here.pop("stale")
    RECORD.write_text(json.dumps(dict(recordings=every), indent=1) + "\n")
    print("recorded", names, "on", platform(), "beside", len(every) - 1, "other platforms")
