"""Run every benchmark area and keep the figures: ``python benchmarks/run.py [--quick] [AREA ...]``.

The same code as ``modbatt bench``; this script adds the machine description and writes
``benchmarks/results/<area>.json`` so figures quoted in docs/ can be traced to a run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from modbatt.bench import AREAS, load_area


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("areas", nargs="*", default=list(AREAS))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    machine = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": args.quick,
    }
    for name in args.areas:
        module = load_area(name)
        if module is None:
            print(f"{name}: not built, skipped")
            continue
        rows = module.run(args.quick)
        (out_dir / f"{name}.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
        print(f"{name}: {len(rows)} rows -> {out_dir / (name + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
