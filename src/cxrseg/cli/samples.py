"""``cxrseg samples``: write synthetic phantom cases in the JSRT/SCR layout
(:func:`cxrseg.phantom.write_phantom_dataset`)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cxrseg samples`` (see :func:`cxrseg.phantom.write_phantom_dataset`)."""
    parser.add_argument("root", help="output folder (SCR layout: images/, masks/<region>/)")
    parser.add_argument("-n", "--n", type=int, default=3, help="number of cases (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first case (default 0)")
    parser.add_argument(
        "--format",
        dest="image_format",
        choices=("img", "png", "dcm"),
        default="png",
        help="image format: JSRT raw .IMG (2048x2048), 8-bit PNG or DICOM (default png)",
    )
    parser.add_argument("--prefix", default="PHANTOM", help="case id prefix (default PHANTOM)")
    parser.add_argument("--size", type=int, default=1024, help="mask/phantom side (default 1024)")
    parser.add_argument("--noise", type=float, default=0.02, help="noise level (default 0.02)")


def run_cli(args) -> int:
    """Run ``cxrseg samples``: write phantom cases and list them."""
    from ..phantom import write_phantom_dataset

    paths = write_phantom_dataset(
        args.root,
        args.n,
        seed=args.seed,
        image_format=args.image_format,
        prefix=args.prefix,
        size=args.size,
        noise=args.noise,
    )
    for p in paths:
        print(p)
    print(f"{len(paths)} synthetic phantom case(s) written under {args.root} (not patient data)")
    return 0
