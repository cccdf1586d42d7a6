"""Quality where results are read (issue 19 item 4): segment descriptions in the .seg.nrrd."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unetrpp.image import Image
from unetrpp.manifest import read_manifest
from unetrpp.segmentation import write_seg_nrrd

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "Resources" / "models" / "demo-abdomen-ct"


def test_seg_nrrd_segments_carry_quality_tags(tmp_path):
    import slicerio

    m = read_manifest(DEMO)
    a = np.zeros((4, 5, 6), np.uint8)
    a[0, 1:3, 1:3] = 6
    a[2, 2:4, 2:4] = 1
    labelmap = Image(a, (1.0, 1.0, 1.0), (0, 0, 0))
    labelmap.meta["segment_quality"] = {
        6: {"status": "review", "reasons": ["uncertain: mean entropy 0.35 inside | odd \\ text"], "partial": True},
        1: {"status": "ok", "reasons": [], "partial": False},
    }
    path = write_seg_nrrd(labelmap, m, tmp_path / "x.seg.nrrd")
    segs = {s["name"]: s for s in slicerio.read_segmentation(str(path), skip_voxels=True)["segments"]}
    liver = segs["liver"]["tags"]
    assert liver["UNETRPlusPlus.Quality"] == "review" and segs["liver"]["status"] == "flagged"
    assert liver["UNETRPlusPlus.QualityReasons"] == "uncertain: mean entropy 0.35 inside ? odd ? text"
    assert "UNETRPlusPlus.VolumeIsLowerBound" in liver
    spleen = segs["spleen"]
    assert spleen["tags"]["UNETRPlusPlus.Quality"] == "ok" and "status" not in spleen
    assert "terminology" in spleen or "TerminologyEntry" in str(spleen)
    assert "UNETRPlusPlus.Quality" not in str(segs["gallbladder"])  # no entry: no tags
