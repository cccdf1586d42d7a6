"""`unetrpp batch`: segment a cohort (see `unetrpp.batch`)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import OutputError
from ..formats import OUTPUT_SUFFIXES

log = logging.getLogger(__name__)

EPILOG = """\
examples:
  unetrpp batch --model demo-abdomen-ct cts/ -o segs/             # every image / DICOM folder in cts/
  unetrpp batch --model ./brats-pkg cases/ -o segs/ --fast        # cases/<case>/{t1n,t1c,t2w,t2f}.nii.gz
  unetrpp batch --model M cohort/ -o out/ --num-parts 8 --part-id $SLURM_ARRAY_TASK_ID

Outputs: OUTDIR/<case>.seg.nrrd (or --format) and <case>.report.json per case, and
OUTDIR/summary.csv (summary-part-I-of-N.csv with --num-parts). Cases already done are skipped: run
the same command again to resume. Exit codes: 0 all cases done, 1 some failed (see the summary),
2 user error, 130 cancelled.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "batch", help="segment a cohort: many files/folders, one output per case, a summary CSV, resumable",
        description="Segment every case of a cohort with one model loaded once; reading and writing overlap "
        "the network. Cases already segmented are skipped, so a killed batch resumes.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, DICOM series folders, or folders of cases")
    p.add_argument("--model", "-m", required=True, help="model package (folder or .zip) or installed model name")
    p.add_argument("-o", "--output-dir", required=True, type=Path, help="folder for the outputs (created if missing)")
    p.add_argument("--format", default=".seg.nrrd", choices=OUTPUT_SUFFIXES,
                   help="output format per case (.dcm: DICOM SEG, DICOM series inputs only)")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    from .segment import add_backend_argument

    add_backend_argument(p)
    p.add_argument("--overlap", type=float, default=None, help="sliding-window overlap in [0, 1) (default: model's)")
    p.add_argument("--fast", action="store_true", help="no mirroring test-time augmentation")
    p.add_argument("--strict", action="store_true", help="refuse cases whose input quality checks fail (they are "
                   "listed as failed, category quality); without it they are segmented and flagged in the summary")
    p.add_argument("--batch-size", type=int, default=None, help="windows per batch (default: automatic)")
    p.add_argument("--num-parts", type=int, default=1, help="split the cohort into this many parts (default 1)")
    p.add_argument("--part-id", type=int, default=0, help="the part this run does, 0 .. num-parts-1 (default 0)")
    p.add_argument("--overwrite", action="store_true", help="segment cases again even when their outputs exist")
    p.add_argument("--progress", choices=("bar", "none"), default="bar", help="a progress bar over cases (terminal)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..batch import BatchRun, check_summary_path, find_cases, shard
    from ..catalogue import resolve_model
    from ..package import read_manifest
    from ..segmenter import Segmenter
    from ..request import check_options
    from .segment import _Cancel

    options = {"fast": args.fast, "overlap": args.overlap, "strict": args.strict, "backend": args.backend,
               "precision": args.precision}
    check_options(**options)  # before anything is read; each case's request is built from these
    model_path = resolve_model(args.model)
    cases = find_cases(args.inputs, read_manifest(model_path))  # before loading the network
    mine = shard(cases, args.num_parts, args.part_id)
    summary = args.output_dir / ("summary.csv" if args.num_parts == 1
                                 else f"summary-part-{args.part_id}-of-{args.num_parts}.csv")
    check_summary_path(summary, mine, model_path)  # the plan's rules, before anything is created or loaded
    try:
        args.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder {args.output_dir}: {exc}") from None
    log.info("%d case(s) found, %d in part %d of %d", len(cases), len(mine), args.part_id, args.num_parts)
    cancel = _Cancel()
    cancel.install()
    segmenter = Segmenter(model_path, args.device, batch_size=args.batch_size)
    bar = None
    if args.progress == "bar" and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(mine), unit="case", desc="cases")

    def on_case(result) -> None:
        line = f"{result.case}: {result.status}" + (f" ({result.seconds:.1f} s)" if result.status == "done" else "")
        line += f" ({result.category} error): {result.error}" if result.error else ""
        if bar is not None:
            bar.update(1)
            bar.write(line, file=sys.stderr)
        elif args.progress == "bar":
            print(line, file=sys.stderr, flush=True)

    batch = BatchRun(segmenter, args.output_dir, output_suffix=args.format, overwrite=args.overwrite,
                     run_options=options, summary_path=summary,
                     cancel=cancel, on_case=on_case)
    try:
        results = batch.run(mine)
    finally:
        if bar is not None:
            bar.close()
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed", "cancelled")}
    print(f"{len(results)} case(s): {counts['done']} done, {counts['skipped']} skipped (already done), "
          f"{counts['failed']} failed; summary {summary}")
    if counts["cancelled"]:
        print("cancelled; run the same command again to resume", file=sys.stderr)
        return 130
    if counts["failed"]:
        print(f"error: {counts['failed']} of {len(results)} case(s) failed; their messages are in {summary}",
              file=sys.stderr)
        return 1
    return 0
