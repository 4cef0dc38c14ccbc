"""Peak memory (max RSS) of ``cxrseg predict`` on one image of each size.

Each size runs in a fresh process (``python -m cxrseg.cli predict IMAGE --workers 0``), whose
peak resident memory is read from ``os.wait4``; the model is the shipped one unless
``--model`` says otherwise. ``--compare SRC`` runs the same with another source tree on
``PYTHONPATH`` (e.g. an older checkout's ``src``) side by side, for a ratio.

    python benchmarks/predict_memory.py --sizes 2048 10000
    python benchmarks/predict_memory.py --sizes 10000 --compare /path/to/old/src
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def make_image(path: Path, size: int) -> Path:
    """An 8-bit PNG phantom radiograph of ``size`` x ``size`` pixels."""
    import numpy as np
    from PIL import Image

    from cxrseg.phantom import make_phantom

    ph = make_phantom(0, size=1024)
    im = Image.fromarray(np.rint(ph.image * 255).astype(np.uint8))
    im.resize((size, size), Image.BILINEAR).save(path)
    return path


def peak_of(src: Path, image: Path, out: Path, extra: list[str]) -> tuple[float, float, int]:
    """(peak RSS in MiB, seconds, exit status) of one ``cxrseg predict`` run."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "cxrseg.cli", "predict", str(image), "--out", str(out),
           "--workers", "0", "--quiet", *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 1024.0, time.perf_counter() - t0, proc.returncode


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 10000])
    ap.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    ap.add_argument("--compare", type=Path, default=None, help="another source tree's src/")
    args = ap.parse_args(argv)
    extra = ["--model", args.model] if args.model else []
    trees = [("this tree", REPO / "src")] + ([("compare", args.compare)] if args.compare else [])
    print(f"{'size':>7} {'tree':>10} {'peak MiB':>9} {'seconds':>8} {'exit':>5}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            image = make_image(Path(tmp) / f"CXR{size}.png", size)
            peaks = {}
            for name, src in trees:
                out = Path(tmp) / f"out-{name.replace(' ', '')}-{size}"
                peak, sec, rc = peak_of(src, image, out, extra)
                peaks[name] = peak
                print(f"{size:>7} {name:>10} {peak:>9.0f} {sec:>8.1f} {rc:>5}", flush=True)
            if len(peaks) == 2:
                print(f"{size:>7} {'ratio':>10} {peaks['this tree'] / peaks['compare']:>9.2f}")
            image.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
