"""Compare left_clavicle IoU of checkpoints on the corrected cases and the untouched validation set."""
import sys
from pathlib import Path

import numpy as np

from cxrseg.corrections import CorrectionStore
from cxrseg.dataset import DatasetIndex
from cxrseg.metrics import jaccard
from cxrseg.predict import get_predictor

data, work, *ckpts = sys.argv[1:]
work = Path(work)
REGION = "left_clavicle"
index = DatasetIndex(data)
corrected = CorrectionStore(work / "corrections", dataset_root=data).cases()
untouched = (work / "untouched_val.txt").read_text().split()
for ck in ckpts:
    pred = get_predictor(ck, device="cpu", precision="bf16")
    out = []
    for cases in (corrected, untouched):
        ious = []
        for c in cases:
            p = pred.predict(index[c].load_image().data, regions=[REGION])[REGION] >= pred.thresholds[REGION]
            ious.append(jaccard(p, index[c].load_masks([REGION])[REGION]))
        out.append(f"{np.mean(ious):.3f} ± {np.std(ious):.3f}")
    print(Path(ck).name, pred.model_id, *out)
