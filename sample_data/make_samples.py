"""Regenerate the synthetic sample cases in this folder.

    python sample_data/make_samples.py        # or: cxrseg samples sample_data -n 3 --format img

Writes ``images/PHANTOM00{1,2,3}.IMG`` (JSRT raw format) and
``masks/<region>/PHANTOM00{1,2,3}.gif`` (SCR layout) with
:func:`cxrseg.phantom.write_phantom_dataset` (seeds 0, 1, 2). The output is
deterministic: running it again reproduces the same bytes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cxrseg.phantom import write_phantom_dataset

#: What the shipped files were made with.
N_CASES = 3
SEED = 0
IMAGE_FORMAT = "img"


def main(out: str | Path | None = None) -> int:
    root = Path(out) if out is not None else Path(__file__).resolve().parent
    paths = write_phantom_dataset(root, N_CASES, seed=SEED, image_format=IMAGE_FORMAT)
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else None))
