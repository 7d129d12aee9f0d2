"""`make demo`: the main job on the seed spaces, from a fresh clone, with no outside files.

For now it compiles every seed space, prints its summary and exact size, and samples a few
architectures of each into out/demo/. Later stages of the pipeline join as they land.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out" / "demo"


def abc(*args: str) -> None:
    command = [sys.executable, "-m", "autobuild_dsl", *args]
    print("$ abc " + " ".join(args), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for space in sorted((ROOT / "spaces").glob("*.abs")):
        abc("compile", str(space.relative_to(ROOT)))
        target = OUT / f"{space.stem}.samples.jsonl"
        abc(
            "sample",
            str(space.relative_to(ROOT)),
            "-n",
            "8",
            "--seed",
            "0",
            "-o",
            str(target.relative_to(ROOT)),
            "--force",
        )
    print(f"\nSamples written to {OUT.relative_to(ROOT)}/")


if __name__ == "__main__":
    main()
