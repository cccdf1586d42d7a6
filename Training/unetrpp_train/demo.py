"""The demonstration model: a small UNETR++ trained on the one labelled abdominal CT in the shared
test data (TotalSegmentator's example_ct_sm, 3 mm), its labels remapped to BTCV organ ids.

    python -m unetrpp_train.demo dataset DST            # write the dataset folder (+ plan.json)
    python -m unetrpp_train.demo second-scan SET        # another labelled CT as a case set (docs/adapt.md)
    unetrpp-train train Training/unetrpp_train/configs/demo-abdomen-ct.json --data DST -o RUN
    unetrpp-train export RUN -o Resources/models/demo-abdomen-ct --name demo-abdomen-ct --dtype float16

It is a demonstration of the whole pipeline on CPU, not a clinical model.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# TotalSegmentator "total" id -> BTCV/Synapse id (shared/data/SOURCES.md).
TOTALSEG_TO_BTCV = {1: 1, 2: 2, 3: 3, 4: 4, 15: 5, 5: 6, 6: 7, 52: 8, 63: 9, 64: 10, 7: 11, 8: 12, 9: 13}
BTCV_NAMES = {
    1: "spleen", 2: "right kidney", 3: "left kidney", 4: "gallbladder", 5: "esophagus", 6: "liver",
    7: "stomach", 8: "aorta", 9: "inferior vena cava", 10: "portal and splenic vein", 11: "pancreas",
    12: "right adrenal gland", 13: "left adrenal gland",
}
CASE_ID = "example_ct_sm"
DEMO_PATCH = [32, 64, 64]


def shared_data_dir() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent.parent / "shared" / "data"
        if (candidate / "ct" / "example_ct_sm.nii.gz").is_file():
            return candidate
    return Path("/work/shared/data")


def remap_totalseg(array: np.ndarray) -> np.ndarray:
    lut = np.zeros(max(int(array.max()) + 1, 256), dtype=np.uint8)
    for ts, btcv in TOTALSEG_TO_BTCV.items():
        lut[ts] = btcv
    return lut[array]


def write_demo_dataset(dst: str | Path, ct: str | Path | None = None, seg: str | Path | None = None) -> Path:
    """The one-case dataset in the converted layout (written by the converters' DatasetWriter:
    dataset.json, cases/<id>/), and plan.json by `unetrpp-train plan`'s planner: the CT's own spacing (3 mm)
    and nnU-Net CT statistics of its foreground, patch 32 x 64 x 64."""
    import SimpleITK as sitk

    from .layout import CaseSource, DatasetSpec, DatasetWriter, ImageRef
    from .planning import plan_dataset

    data = shared_data_dir()
    ct = Path(ct or data / "ct" / "example_ct_sm.nii.gz")
    seg = Path(seg or data / "ct" / "example_seg.nii.gz")
    dst = Path(dst)
    source_values = int(sitk.GetArrayFromImage(sitk.ReadImage(str(seg))).max())
    spec = DatasetSpec(
        dataset="btcv", variant="synapse", name="demo-abdomen-ct",
        description="TotalSegmentator example_ct_sm (one abdominal CT, 3 mm) with its reference labels "
                    "remapped to BTCV organ ids",
        channels=[{"name": "ct", "modality": "CT"}], labels=dict(BTCV_NAMES),
        evaluation={"classes": [{"name": n, "labels": [v]} for v, n in BTCV_NAMES.items()],
                    "description": "the 13 BTCV organs"},
        source_path=ct.parent, source_layout="TotalSegmentator test files (example_ct_sm + example_seg)",
        label_mapping={"source": "TotalSegmentator total", "map": {str(k): v for k, v in TOTALSEG_TO_BTCV.items()},
                       "other": 0},
    )
    writer = DatasetWriter(dst, spec, overwrite=True)
    if writer.begin():
        writer.write_case(CaseSource(
            case_id=CASE_ID, images={"ct": ImageRef(ct)}, label=seg,
            label_map={v: TOTALSEG_TO_BTCV.get(v, 0) for v in range(source_values + 1)},
        ))
        writer.finish({"train": [CASE_ID], "val": [CASE_ID]}, "the one case is both training and validation data")
    # plan.json is written by planning alone: the CT's own spacing (3 mm), nnU-Net CT statistics of every
    # foreground voxel after clipping to the 0.5/99.5 percentiles (the values the demo model was trained with)
    plan_dataset(dst, variant="btcv", patch_size=DEMO_PATCH, sample_stride=1, ct_stats="clipped")
    log.info("demo dataset written to %s", dst)
    return dst


def write_second_scan(set_dir: str | Path, case: str = "siemens-20") -> dict:
    """The other labelled abdominal CT of the shared data (ct_dicom: a Siemens series, 512 x 512 x 20 at
    0.98 x 0.98 x 2 mm, with TotalSegmentator's labels for it) as one case of a case set in the nnU-Net raw
    layout, labels remapped to the BTCV organs of the demo model (all 13 declared: the reference is
    complete for this slab, organs it lacks are absent from it). Used by docs/adapt.md."""
    import SimpleITK as sitk

    from .caseset import add_case

    data = shared_data_dir()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(data / "ct_dicom" / "example_ct_dicom")))
    image = reader.Execute()
    seg = sitk.ReadImage(str(data / "ct_dicom" / "example_seg_dicom.nii.gz"))
    # the label file stores the same grid in the other voxel order (direction y -1): same physical voxels
    seg = sitk.Resample(seg, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, seg.GetPixelID())
    label = sitk.GetImageFromArray(remap_totalseg(sitk.GetArrayFromImage(seg)))
    label.CopyInformation(image)
    return add_case(set_dir, case, {"ct": image}, label, {name: value for value, name in BTCV_NAMES.items()},
                    source={"image": "shared/data/ct_dicom/example_ct_dicom (TotalSegmentator test series)",
                            "label": "shared/data/ct_dicom/example_seg_dicom.nii.gz (TotalSegmentator total, remapped "
                                     "to BTCV ids; a model's output standing in for a corrected segmentation)"},
                    overwrite=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unetrpp_train.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("dataset", help="write the one-case demo dataset")
    p.add_argument("dst")
    p = sub.add_parser("second-scan", help="write the other labelled CT as a case set (nnU-Net raw layout)")
    p.add_argument("dst")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .cli import guarded

    def run() -> int:
        if args.cmd == "second-scan":
            print(json.dumps(write_second_scan(args.dst)["labels_present"]))
        else:
            write_demo_dataset(args.dst)
        return 0

    return guarded(run)


if __name__ == "__main__":
    sys.exit(main())
