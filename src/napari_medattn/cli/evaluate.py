"""``medattn evaluate``: score predicted label maps against references (Dice, HD95, ...)."""

from __future__ import annotations

import argparse
import sys

from napari_medattn.errors import DimensionError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Register ``medattn evaluate PRED REF [--out DIR] [--classes ...]``."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score predicted label maps against references: Dice, IoU, HD95, ASSD, ...",
        description="Score a predicted label map against a reference (two files), or every "
                    "prediction in a folder against the reference of the same file name "
                    "(two folders), per class and on average: Dice, IoU, HD95, Hausdorff "
                    "and average symmetric surface distance in mm (voxel spacing from the "
                    "files), sensitivity, precision and volumes. Prints a table and writes "
                    "scores.csv, summary.csv and evaluation.json. Cases that cannot be "
                    "scored are reported on stderr and the others are still scored. "
                    "Empty-mask conventions: see docs/metrics.md.",
    )
    parser.add_argument("pred", metavar="PRED", help="predicted label map, or folder of them")
    parser.add_argument("ref", metavar="REF", help="reference label map, or folder of them")
    parser.add_argument("--out", default="evaluation", metavar="DIR",
                        help="folder for scores.csv, summary.csv and evaluation.json "
                             "(default: ./evaluation)")
    parser.add_argument("--classes", nargs="+", metavar="LABEL[=NAME]",
                        help="labels to score, optionally named, e.g. 1=liver 2=tumour "
                             "(default: every non-zero label found)")
    parser.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    """Score, print the table, write the files; 1 if any case could not be scored."""
    from napari_medattn.metrics import evaluate_paths, format_table, write_report

    classes, names = parse_classes(args.classes)
    report = evaluate_paths(args.pred, args.ref, classes=classes, class_names=names)
    for _, message in report.problems:
        print(f"medattn evaluate: {message}", file=sys.stderr)
    if not report.scores:
        print("medattn evaluate: no case could be scored.", file=sys.stderr)
        return 1
    print(format_table(report))
    written = write_report(report, args.out)
    print("wrote " + ", ".join(str(path) for path in written))
    return 1 if report.problems else 0


def parse_classes(items: list[str] | None) -> tuple[list[int] | None, dict[int, str]]:
    """``["1", "2=tumour"]`` -> ``([1, 2], {2: "tumour"})``; ``None`` -> ``(None, {})``."""
    if not items:
        return None, {}
    labels, names = [], {}
    for item in items:
        label, _, name = item.partition("=")
        try:
            value = int(label)
        except ValueError:
            raise DimensionError(f"--classes takes LABEL or LABEL=NAME with an integer "
                                 f"label, not {item!r}.") from None
        if value < 0:
            raise DimensionError(f"--classes labels must be non-negative, not {value}.")
        labels.append(value)
        if name:
            names[value] = name
    return labels, names
