"""The toy-model study at full grid, for as long as the machine allows; publishes docs/toy-study.md.

  python benchmarks/bench_toy_study.py --minutes-per-model 3.5            # one CPU core: about 50 minutes
  python benchmarks/bench_toy_study.py --minutes-per-model 10 --device cuda
  python benchmarks/bench_toy_study.py --out study --publish docs        # rerun: finished variants are skipped

Runs `expertcache toy study` (resumable: kill it and run it again), then copies report.md and
its figures to PUBLISH/toy-study.md and PUBLISH/toy-study/, headed by the machine, the torch
threads and the wall time. This also covers the study end to end at real size, which the test
suite runs only on a two-model grid of seconds.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from expertcache.toy.study import run_study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "expertcache-toy-study")
    parser.add_argument("--minutes-per-model", type=float, default=3.5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--publish", type=Path, default=None, help="docs folder to copy the report into")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    report = run_study(args.out, minutes_per_model=args.minutes_per_model, device=args.device,
                       progress=lambda line: print(time.strftime("%H:%M:%S"), line, flush=True))
    wall = time.monotonic() - started
    print(f"report: {report} ({wall / 60:.1f} min this run)")
    if args.publish is not None:
        publish(report, args.publish, args)


def publish(report: Path, docs: Path, args) -> None:
    figures = docs / "toy-study"
    shutil.rmtree(figures, ignore_errors=True)
    shutil.copytree(report.parent / "figures", figures)
    machine = (f"Machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs visible, "
               f"torch {torch.__version__} with {args.threads} thread(s) on {args.device}. Rerun: "
               f"`python benchmarks/bench_toy_study.py --minutes-per-model {args.minutes_per_model:g} "
               f"--device {args.device} --publish docs` (docs/toy.md).")
    text = report.read_text().replace("](figures/", "](toy-study/").replace(
        "[suitability/report.html](suitability/report.html)",
        "`OUT/suitability/report.html` (written by the study, not copied here: about 0.5 MB a model)")
    title, rest = text.split("\n", 1)
    (docs / "toy-study.md").write_text(f"{title}\n\n{machine}\n{rest}")


if __name__ == "__main__":
    main()
