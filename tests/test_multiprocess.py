"""Two CPU processes over gloo (torchrun) train exactly like one process with twice the batch (GRPO: twice the prompts);
REINFORCE, PPO and GRPO ranks stay in sync."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent / "scripts" / "ddp_trainers.py"
TOL = 1e-5


@pytest.fixture(scope="module")
def outs(tmp_path_factory):
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun is not installed")
    tmp = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(cmd, name, batch):
        (tmp / name).mkdir()
        r = subprocess.run(
            cmd + [str(SCRIPT), str(tmp / name), str(batch)], capture_output=True, text=True, env=env, timeout=900
        )
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return tmp / name

    return dict(
        one=run([sys.executable], "one", 4),  # one process, 4 rows a step
        two=run(["torchrun", "--nproc_per_node", "2", "--master_port", "29517"], "two", 2),  # 2 × 2 rows
        half=run([sys.executable], "half", 2),
    )  # one process, 2 rows: another batch


def _load(d, name):
    return json.loads((d / f"{name}_history.json").read_text()), torch.load(d / f"{name}_weights.pt")


def _max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("name", ["sft", "reward", "features", "dpo", "grpo"])
def test_two_processes_equal_one_with_twice_the_batch(outs, name):
    (h1, w1), (h2, w2), (hh, wh) = (_load(outs[k], name) for k in ("one", "two", "half"))
    assert [r["step"] for r in h2] == [r["step"] for r in h1] == list(range(1, 4 if name != "grpo" else 5))
    torch.testing.assert_close(
        torch.tensor([r["loss"] for r in h2]), torch.tensor([r["loss"] for r in h1]), rtol=0, atol=TOL
    )
    assert h2[-1]["num_tokens"] == h1[-1]["num_tokens"]  # tokens counted over both processes
    assert _max_diff(w2, w1) < TOL, _max_diff(w2, w1)
    assert _max_diff(wh, w1) > 100 * TOL  # the tolerance can fail: half the batch is another step


@pytest.mark.parametrize("name", ["reinforce", "ppo", "grpo"])
def test_sampling_trainers_keep_ranks_in_sync(outs, name):
    r0, r1 = (torch.load(outs["two"] / f"{name}_rank{r}.pt") for r in (0, 1))
    assert _max_diff(r0["weights"], r1["weights"]) == 0.0  # identical weights on both ranks
    timeless = lambda h: [
        {k: v for k, v in r.items() if k not in ("tokens_per_second", "generation_seconds")} for r in h
    ]
    assert timeless(r0["history"]) == timeless(r1["history"])  # metrics gathered over both ranks
    start = {n: torch.zeros_like(p) for n, p in r0["weights"].items() if "lora_B" in n}
    assert max((r0["weights"][n] - z).abs().max().item() for n, z in start.items()) > 1e-4  # and they trained
