"""The plain per-region baseline that ``cxrseg bench --only throughput`` runs against.

What a straightforward script does with the per-region approach: five single-output
U-Nets (ResNet34, fp32, 256 x 256 input, eager, contiguous memory), one image at a time
(batch 1): read the file, resize it to 256 x 256, run the five models, resize each
probability map back to the image's size, threshold at 0.5 and write five PNG masks.
No workers, no overlap. The weights are random (timing does not depend on them).

Run as ``python -m cxrseg.bench_baseline FOLDER OUT [DEVICE [SIZE ENCODER]]`` (the last
two only for smoke tests); prints the number of images.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv=None) -> int:
    import numpy as np
    import segmentation_models_pytorch as smp
    import torch
    import torch.nn.functional as F
    from PIL import Image

    argv = list(sys.argv[1:] if argv is None else argv)
    folder, out = Path(argv[0]), Path(argv[1])
    device = torch.device(argv[2] if len(argv) > 2 else "cpu")
    size = int(argv[3]) if len(argv) > 3 else 256
    encoder = argv[4] if len(argv) > 4 else "resnet34"
    regions = ("heart", "left_clavicle", "right_clavicle", "left_lung", "right_lung")
    torch.manual_seed(0)
    models = [
        smp.Unet(encoder, encoder_weights=None, classes=1, activation=None).eval().to(device) for _ in regions
    ]
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".tif", ".tiff"))
    for r in regions:
        (out / r).mkdir(parents=True, exist_ok=True)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
    with torch.inference_mode():
        for f in files:
            img = np.asarray(Image.open(f).convert("L"), dtype=np.float32) / 255
            h, w = img.shape
            x = torch.from_numpy(img)[None, None].to(device)
            x = F.interpolate(x, size=(size, size), mode="area").expand(1, 3, size, size)
            x = (x - mean) / std
            for r, m in zip(regions, models, strict=True):
                p = torch.sigmoid(m(x))
                p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
                mask = (p >= 0.5).cpu().numpy().astype(np.uint8) * 255
                Image.fromarray(mask).save(out / r / f"{f.stem}.png")
    print(len(files))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
