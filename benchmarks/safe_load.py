"""`ila.safe_load` against `torch.load(weights_only=True)`: reading time of a real-sized state dict, and the peak
memory each takes on the crafted files of tests/test_safe_load.py (small files declaring gigabytes).

    python benchmarks/safe_load.py --mb 200 --bombs compressed overlap expanded numel

Time: best of `--repeats` reads of one file, both readers alternating in one run (page cache warm for both).
Memory: peak RSS growth (VmHWM, reset after imports; Linux) of a fresh process that reads one file with one reader; bombs that
make torch.load allocate gigabytes (legacy, declared-size) are left out by default.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

_READ_ONE = """
import sys, torch
from ila.safe_load import load
def peak():   # VmHWM (getrusage's ru_maxrss would start at the parent's peak)
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
open("/proc/self/clear_refs", "w").write("5")
before = peak()
try:
    (torch.load(sys.argv[1], weights_only=True) if sys.argv[2] == "torch.load" else load(sys.argv[1]))
    outcome = "read"
except Exception as e:  # noqa: BLE001
    outcome = "refused: " + type(e).__name__
print(f"{(peak() - before) / 1024:.0f} MB|{outcome}")
"""


def timing(mb: int, repeats: int, root: Path) -> None:
    from ila.safe_load import load

    state = {f"layer{i}.weight": torch.randn(256, 1024) for i in range(mb)}      # 1 MB each
    path = root / "state.pt"
    torch.save(state, path)
    best = {"torch.load": float("inf"), "ila.safe_load.load": float("inf")}
    for _ in range(repeats):
        for name, read in (("torch.load", lambda: torch.load(path, weights_only=True)),
                           ("ila.safe_load.load", lambda: load(path))):
            t = time.perf_counter()
            read()
            best[name] = min(best[name], time.perf_counter() - t)
    ratio = best["ila.safe_load.load"] / best["torch.load"]
    print(f"{mb} MB state dict: torch.load {best['torch.load']:.3f} s, ila.safe_load.load "
          f"{best['ila.safe_load.load']:.3f} s (ratio {ratio:.2f})")


def bombs(names: list[str], root: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_safe_load import make_bombs

    files = make_bombs(root)
    for name in names:
        path = files[name]
        row = [f"{name} ({path.stat().st_size / 1e6:.2f} MB file):"]
        for reader in ("torch.load", "ila.safe_load.load"):
            out = subprocess.run([sys.executable, "-c", _READ_ONE, str(path), reader], capture_output=True, text=True)
            growth, _, outcome = (out.stdout.strip().splitlines() or ["?|crashed"])[-1].partition("|")
            row.append(f"{reader} {growth} peak growth, {outcome};")
        print(" ".join(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="size of the timed state dict")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bombs", nargs="*", default=["compressed", "overlap", "expanded", "numel", "tensor-call"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        timing(args.mb, args.repeats, Path(tmp))
        bombs(args.bombs, Path(tmp))


if __name__ == "__main__":
    main()
