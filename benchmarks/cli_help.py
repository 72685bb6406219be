"""`samcache --help` must answer in under a second (the engine is imported only inside commands).

    python benchmarks/cli_help.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time

from common import save, table


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    exe = shutil.which("samcache") or str(__import__("pathlib").Path(sys.executable).with_name("samcache"))
    rows = []
    for what in (["--help"], ["embed", "--help"], ["--version"]):
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            subprocess.run([exe, *what], check=True, capture_output=True)
            times.append(time.perf_counter() - t)
        rows.append({"command": "samcache " + " ".join(what), "median_s": statistics.median(times),
                     "target_s": 1.0, "met": statistics.median(times) < 1.0})
    print(table(rows, ["command", "median_s", "target_s", "met"]))
    print("results:", save("cli_help", vars(args), rows))


if __name__ == "__main__":
    main()
