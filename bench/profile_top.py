"""Count py-spy raw stacks (``py-spy record -f raw``): the share of samples in which each
function appears anywhere on the stack, and the share where it is the innermost frame.

    python bench/profile_top.py PROFILE.txt ... [--top N]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path


def count(paths: list[Path]) -> tuple[Counter[str], Counter[str], int]:
    """(inclusive, innermost, total samples) over every stack in ``paths``."""
    inclusive: Counter[str] = Counter()
    innermost: Counter[str] = Counter()
    total = 0
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            stack, _, samples = line.rpartition(" ")
            if not stack or not samples.isdigit():
                continue
            n = int(samples)
            frames = stack.split(";")
            total += n
            # A function counted once per stack, however deep its recursion.
            for frame in set(frames):
                inclusive[frame] += n
            innermost[frames[-1]] += n
    return inclusive, innermost, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    inclusive, innermost, total = count(args.profiles)
    if not total:
        print("no samples", file=sys.stderr)
        return 1
    print(f"{total} samples")
    print("\nanywhere on the stack:")
    for frame, n in inclusive.most_common(args.top):
        print(f"  {100 * n / total:5.1f}%  {frame}")
    print("\ninnermost frame:")
    for frame, n in innermost.most_common(args.top):
        print(f"  {100 * n / total:5.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
