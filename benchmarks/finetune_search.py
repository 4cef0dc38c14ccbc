"""``cxrseg finetune`` with its default recipe (the settings search) on a handful of corrections.

Protocol (as in docs/finetune_experiment.md): the model's validation cases are split into
two halves (sorted ids, alternating); the N worst left clavicles of the first half are
"corrected" with their reference masks (a stand-in for a person) in a fresh corrections
store; the second half is the untouched validation set of the tolerance guard. Then
``finetune()`` runs with default settings, as ``cxrseg finetune --corrections DIR --data
DATA --val-cases UNTOUCHED`` would. For each N the script prints whether a model was
written, the corrected cases' mean Jaccard change, the largest validation fall, the
settings tried and the wall time.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/finetune_search.py $CXRSEG_DATA WORK [--n 5 8] [--model CKPT]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cxrseg.corrections import CorrectionStore  # noqa: E402
from cxrseg.dataset import DatasetIndex  # noqa: E402
from cxrseg.finetune import finetune, format_candidates  # noqa: E402
from cxrseg.metrics import jaccard  # noqa: E402
from cxrseg.model import read_metadata, resolve_checkpoint_path  # noqa: E402
from cxrseg.predict import get_predictor  # noqa: E402

REGION = "left_clavicle"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("work", type=Path, help="scratch folder (corrections, fine-tuned models)")
    ap.add_argument("--n", type=int, nargs="+", default=[5, 8], help="numbers of corrected cases")
    ap.add_argument("--model", default=None, help="source checkpoint (default: the shipped model)")
    ap.add_argument("--budget", type=float, default=15.0, help="search budget in minutes (the default)")
    args = ap.parse_args(argv)

    src = resolve_checkpoint_path(args.model)
    meta = read_metadata(src)
    val = sorted(meta["val_cases"])
    pool, untouched = val[0::2], val[1::2]
    index = DatasetIndex(args.data)
    pred = get_predictor(src, device="cpu")
    th = pred.thresholds[REGION]
    before = {}
    for c in pool:
        p = pred.predict(index[c].load_image().data, regions=[REGION])[REGION] >= th
        before[c] = jaccard(p, index[c].load_masks([REGION])[REGION])
    order = sorted(pool, key=lambda c: before[c])
    summary = []
    for n in args.n:
        work = args.work / f"n{n}"
        shutil.rmtree(work, ignore_errors=True)
        store = CorrectionStore(work / "corrections", dataset_root=args.data)
        for c in order[:n]:
            store.save(c, REGION, index[c].load_masks([REGION])[REGION], model_id=pred.model_id,
                       annotator="SCR reference mask (stand-in for a person)",
                       image_path=index[c].image_path)
        t0 = time.monotonic()
        res = finetune(store, src, work / "finetuned.safetensors", data_root=args.data,
                       val_cases=untouched, search_budget=60.0 * args.budget)
        secs = time.monotonic() - t0
        gain = res.after["corrected"][REGION] - res.before["corrected"][REGION]
        worst = min(res.after["validation"][r] - res.before["validation"][r] for r in res.before["validation"])
        print(f"\n== {n} corrected left clavicles: {', '.join(order[:n])}")
        print(format_candidates(res.before, res.candidates))
        print(res.table())
        print(f"written: {res.written} ({res.reason}); kept model: corrected {gain:+.4f}, "
              f"worst validation change {worst:+.4f}; {secs / 60:.1f} min")
        summary.append({"n": n, "written": res.written, "corrected_change": round(gain, 4),
                        "worst_validation_change": round(worst, 4), "minutes": round(secs / 60, 1),
                        "candidates": len(res.candidates), "reason": res.reason})
    print("\n" + json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
