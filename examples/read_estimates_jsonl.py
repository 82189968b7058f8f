"""Follow a JSON-lines estimate file written by ``streamemg run --output jsonl:estimates.jsonl``.

    python examples/read_estimates_jsonl.py estimates.jsonl
"""

import json
import sys
import time


def follow(path: str) -> None:
    with open(path, encoding="utf-8") as fh:
        while True:
            line = fh.readline()
            if not line:
                time.sleep(0.2)
                continue
            est = json.loads(line)
            label = est["label"] or f"withheld ({est['quality']})"
            print(f"{est['name']:>12}  t={est['time']:8.2f}s  {label:<10} {est['confidence']:.2f}")


if __name__ == "__main__":
    follow(sys.argv[1] if len(sys.argv) > 1 else "estimates.jsonl")
