"""One line per benchmark target, the same shape everywhere, so that `benchmarks/run.py` can gather them into a table:
`PASS: <what> = <value> (target <= <target>)`, or `>=` where larger is better."""


def verdict(what: str, value: float, target: float, larger_is_better: bool = False) -> bool:
    "Print the target's line and return whether it passed."
    ok = value >= target if larger_is_better else value <= target
    print(f"{'PASS' if ok else 'FAIL'}: {what} = {value:.3g} (target {'>=' if larger_is_better else '<='} {target:g})")
    return ok
