"""`python -m tools.tiny OUT_DIR [--force]`: build every tiny model into OUT_DIR."""

import argparse
import time

from . import build_all


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.tiny", description=__doc__)
    parser.add_argument("out_dir", help="folder that receives one subfolder per tiny model")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (same seed, same weights)")
    parser.add_argument("--force", action="store_true", help="rebuild even when the cached models are current")
    args = parser.parse_args()
    start = time.perf_counter()
    paths = build_all(args.out_dir, seed=args.seed, force=args.force)
    for name, path in paths.items():
        print(f"{name:10s} {path}")
    print(f"tiny models ready in {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
