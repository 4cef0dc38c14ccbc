"""Does sub-pixel shift test-time augmentation help a model whose input is smaller than the masks?

    python benchmarks/tta_shift.py MODEL.safetensors DATA_ROOT [--threads 1]

For each of the checkpoint's validation cases (``val_cases`` in its metadata) the image is
predicted as it is and shifted by half a model pixel down, right, and both (edge-padded; the
maps are shifted back). Averaging the four maps samples the image on a grid twice as fine as
the model's input. Prints the mean Jaccard per region at the masks' native grid, plain and
with the averaged maps (threshold 0.5). No horizontal flips: they swap the patient's sides.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    from cxrseg.dataset import DatasetIndex
    from cxrseg.metrics import jaccard
    from cxrseg.model import read_metadata
    from cxrseg.predict import Predictor

    torch.set_num_threads(args.threads)
    pred = Predictor(args.model, device="cpu")
    cases = sorted(read_metadata(args.model)["val_cases"])
    index = DatasetIndex(args.data)
    scores = {k: {r: [] for r in pred.regions} for k in ("plain", "shift TTA")}
    t0 = time.perf_counter()
    for cid in cases:
        image = index[cid].load_image().data
        truth = index[cid].load_masks(pred.regions)
        half = max(1, image.shape[0] // pred.input_size // 2)
        maps = []
        for dy, dx in ((0, 0), (0, half), (half, 0), (half, half)):
            moved = np.pad(image, ((dy, 0), (dx, 0)), mode="edge")[: image.shape[0], : image.shape[1]]
            out = pred.predict(moved)
            maps.append({r: np.pad(m, ((0, dy), (0, dx)), mode="edge")[dy:, dx:] for r, m in out.items()})
        for r in pred.regions:
            scores["plain"][r].append(jaccard(maps[0][r] >= 0.5, truth[r]))
            scores["shift TTA"][r].append(jaccard(np.mean([m[r] for m in maps], axis=0) >= 0.5, truth[r]))
    print(f"model {pred.model_id} (input {pred.input_size} px), {len(cases)} validation cases, "
          f"{time.perf_counter() - t0:.0f} s")
    print(f"{'':10s}" + "".join(f"{r:>16s}" for r in pred.regions))
    for k, per in scores.items():
        print(f"{k:10s}" + "".join(f"{np.mean(v):16.4f}" for v in per.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
