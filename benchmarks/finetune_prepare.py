"""Prepare the fine-tuning experiment: split the model's validation cases, pick the 8 worst
left_clavicle cases of one half, store their SCR masks as stand-in corrections."""
import sys
from pathlib import Path

from cxrseg.corrections import CorrectionStore
from cxrseg.dataset import DatasetIndex
from cxrseg.metrics import jaccard
from cxrseg.model import read_metadata
from cxrseg.predict import get_predictor

ckpt, data, work = sys.argv[1], sys.argv[2], Path(sys.argv[3])
control = sys.argv[4:] == ["control"]  # control: "correct" with the model's own prediction
REGION, N_WORST = "left_clavicle", 8
meta = read_metadata(ckpt)
val = sorted(meta["val_cases"])
pool, untouched = val[0::2], val[1::2]          # two halves, alternating in sorted order
index = DatasetIndex(data)
pred = get_predictor(ckpt, device="cpu", precision="bf16")
th = pred.thresholds[REGION]
rows = {}
for c in pool:
    p = pred.predict(index[c].load_image().data, regions=[REGION])[REGION] >= th
    t = index[c].load_masks([REGION])[REGION]
    rows[c] = (jaccard(p, t), p, t)
worst = sorted(pool, key=lambda c: rows[c][0])[:N_WORST]
store = CorrectionStore(work / "corrections", dataset_root=data)
for c in worst:
    iou, p, t = rows[c]
    v = store.save(c, REGION, p if control else t, prediction=p, truth=t, model_id=pred.model_id,
                   annotator=("control: prediction accepted" if control
                              else "SCR reference mask (stand-in for a person)"),
                   image_path=index[c].image_path)
    print(f"{c} {REGION} IoU {iou:.3f} -> correction v{v.version}")
(work / "untouched_val.txt").write_text("\n".join(untouched) + "\n")
print(f"model {pred.model_id}: correction pool {len(pool)}, corrected {len(worst)}, "
      f"untouched validation {len(untouched)}")
