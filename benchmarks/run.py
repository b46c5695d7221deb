"""Every benchmark, one after another, and one table of their targets: what is measured, its value, the target,
PASS/FAIL. Each benchmark prints its own measurements (kept in benchmarks/last_run/<name>.txt) and one `PASS:`/`FAIL:`
line per target (`verdict.py`); this collects those lines. Run alone on an idle machine: every figure is a time.
Run: python benchmarks/run.py [NAME ...] (default: all of them; e.g. `python benchmarks/run.py sft dpo`)
"""

import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
BENCHMARKS = ["sampling", "sft", "reward", "lora", "policy_gradient", "ppo", "dpo", "dpo_memory", "grpo", "gold"]
LINE = re.compile(r"^(PASS|FAIL): (.+) = (\S+) \(target (<=|>=) (\S+)\)$")


def main(names):
    if unknown := set(names) - set(BENCHMARKS):
        sys.exit(f"no benchmark named {sorted(unknown)}; they are {BENCHMARKS}")
    out_dir = HERE / "last_run"
    out_dir.mkdir(exist_ok=True)
    table, failed = [], False
    for name in names or BENCHMARKS:
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, str(HERE / f"{name}.py")], capture_output=True, text=True, cwd=HERE)
        seconds = time.perf_counter() - t0
        (out_dir / f"{name}.txt").write_text(out.stdout + ("\n" + out.stderr[-4000:] if out.returncode else ""))
        rows = [LINE.match(line.strip()) for line in out.stdout.splitlines()]
        rows = [m.groups() for m in rows if m]
        if out.returncode or not rows:
            rows = [("FAIL", f"{name}: exit {out.returncode}, no target line", "-", "", "-")]
        table += [(name, seconds, *r) for r in rows]
        failed |= any(r[0] == "FAIL" for r in rows)
        print(f"{name}: {seconds:.0f} s", flush=True)
    print("\n| benchmark | what | value | target | verdict |\n|---|---|---|---|---|")
    for name, _, verdict, what, value, op, target in table:
        print(f"| {name} | {what} | {value} | {op} {target} | {verdict} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
