"""``medattn info``: describe the volumes and DICOM series found in paths."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from napari_medattn.errors import MedAttnError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Register ``medattn info PATH...``."""
    parser = subparsers.add_parser(
        "info",
        help="describe the volumes/series in NIfTI files, DICOM files, folders or DICOMDIRs",
        description="For each volume or DICOM series found: name, modality, shape, voxel "
                    "spacing (mm), orientation code, the voxel-to-patient affine (array "
                    "index -> LPS mm) and warnings. Bad paths are reported on stderr and "
                    "the others are still processed.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH")
    parser.add_argument("--modality", help="override the modality (e.g. CT for a NIfTI)")
    parser.set_defaults(func=run_info)


def run_info(args: argparse.Namespace) -> int:
    """Print a description of every volume in ``args.paths``; 1 if any path failed."""
    from napari_medattn.io import read  # keeps ``medattn --help`` fast

    status = 0
    for path in args.paths:
        try:
            volumes = read(path, modality=args.modality)
        except MedAttnError as error:
            print(f"medattn info: {error}", file=sys.stderr)
            status = 1
            continue
        print(path)
        for number, volume in enumerate(volumes, start=1):
            print(describe_volume(volume, number))
    return status


def describe_volume(volume, number: int = 1) -> str:
    """A human-readable block describing one volume (used by ``medattn info``)."""
    shape = " x ".join(str(n) for n in volume.data.shape)
    if volume.data.ndim == 4:
        shape += f"  ({volume.meta.get('frame_axis', 'frames')} first)"
    lines = [
        f"  [{number}] {volume.name}",
        f"      modality     {volume.modality}",
        f"      shape        {shape}",
        f"      dtype        {volume.data.dtype}",
        f"      spacing mm   {' x '.join(f'{s:.6g}' for s in volume.spacing)}",
        f"      orientation  {volume.orientation}{' (oblique)' if volume.is_oblique else ''}",
    ]
    if volume.meta.get("units"):
        lines.append(f"      units        {volume.meta['units']}")
    lines.append("      affine (array index -> LPS mm)")
    # Rounded and + 0.0 so that tiny negatives do not print as "-0.000000".
    lines += ["        " + " ".join(f"{np.round(v, 6) + 0.0:12.6f}" for v in row)
              for row in volume.affine]
    lines += [f"      warning: {text}" for text in volume.meta.get("warnings", [])]
    return "\n".join(lines)
