"""Replies scored per second by chapter 8b's gold reward (VADER), beside the proxy reward model it stands in for.

The gold reward must be cheap enough to score every rollout and every evaluation: target >= 1,000 replies per second
on one core. The proxy (SmolLM2-135M with a one-output head, one thread, batches of 16) is timed on the same replies,
in the same run, A B A B, so the ratio says what a gold reward saves over a learned one.
Run: python benchmarks/gold.py [--replies 2000] [--rounds 2]
"""

import argparse
import itertools
import time

import torch
from verdict import verdict

from alignbook.gold import REVIEW_SUBJECTS, gold_reward, score_one
from alignbook.reward import load_reward_model

OPENINGS = ["I loved", "I did not enjoy", "Honestly,", "What a disappointment:", "A pleasant surprise:", "Meh,"]
CLOSINGS = ["the staff were friendly.", "it was far too expensive.", "I would go back.", "never again!!!", "fine."]


def replies(n: int) -> list[str]:
    "n review-like sentences, deterministic: every opening × subject × closing, cycled."
    combos = itertools.cycle(itertools.product(OPENINGS, REVIEW_SUBJECTS, CLOSINGS))
    return [f"{a} {s}; {c}" for a, s, c in itertools.islice(combos, n)]


def main(n=2000, rounds=2):
    torch.set_num_threads(1)  # one core for both
    texts = replies(n)
    proxy, tok = load_reward_model()
    proxy.eval()
    ids = [tok(t + tok.eos_token)["input_ids"] for t in texts[:64]]  # the proxy is timed on 64 of the replies
    rates = {"gold": [], "proxy": []}
    for _ in range(rounds):  # A B A B
        t0 = time.perf_counter()
        gold_reward(texts)
        rates["gold"].append(n / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(ids), 16):
                score_one(proxy, ids[i : i + 16], tok.pad_token_id)
        rates["proxy"].append(len(ids) / (time.perf_counter() - t0))
    gold, proxy_rate = (sorted(v)[len(v) // 2] for v in rates.values())
    print(f"gold reward: {gold:,.0f} replies/s; proxy reward model: {proxy_rate:,.1f} replies/s (one core, median)")
    print(f"gold ÷ proxy time per reply: {proxy_rate / gold:.4f}")
    verdict("gold reward, replies/s", gold, 1000, larger_is_better=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--replies", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    main(a.replies, a.rounds)
