"""The example CT (and its reference labels) as a SampleData source: category "UNETR++" in Slicer's
Sample Data module, read from the files the extension installs (a file:// URI, SHA256-checked), so
"Download sample -> Segment" works offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .modelstore import MODULE_DIR

CATEGORY = "UNETR++"
SAMPLE_NAME = "UNETRPlusPlusAbdomenCT"
NODE_NAME = "UNETRPlusPlusAbdomenCT"
CT_FILE = "example_ct_sm.nii.gz"
CT_SHA256 = "e50c00b2914e2cac0aaee8e7f3b5f57d44d9f21bfd5c0577271c54c0cb49e9fb"
# TotalSegmentator's reference labels of the same CT, remapped to the demo model's (BTCV) values
LABELS_FILE = "example_ct_sm_labels.nii.gz"
LABELS_SHA256 = "3f9a6c9967f0b31f59cc2ec04c39776f81c82f80839c77076a4196424812e1ef"
THUMBNAIL = MODULE_DIR / "Resources" / "Icons" / "UNETRPlusPlusSampleCT.png"


def examples_dir() -> Path | None:
    """Resources/examples/ of the source tree, or beside the installed module (CMake)."""
    for candidate in (MODULE_DIR.parent / "Resources" / "examples", MODULE_DIR / "Resources" / "examples"):
        if (candidate / CT_FILE).is_file():
            return candidate
    return None


def sample_source() -> dict[str, Any] | None:
    """Keyword arguments of SampleData.SampleDataLogic.registerCustomSampleDataSource."""
    folder = examples_dir()
    if folder is None:
        return None
    return {
        "category": CATEGORY,
        "sampleName": SAMPLE_NAME,
        "uris": (folder / CT_FILE).resolve().as_uri(),
        "fileNames": CT_FILE,
        "nodeNames": NODE_NAME,
        "checksums": f"SHA256:{CT_SHA256}",
        "thumbnailFileName": str(THUMBNAIL),
        "loadFileTypes": "VolumeFile",
    }


def register(sample_data_logic: Any) -> bool:
    """Register the sample with the SampleData module's logic class; False if the files are missing."""
    source = sample_source()
    if source is None:
        return False
    sample_data_logic.registerCustomSampleDataSource(**source)
    return True
