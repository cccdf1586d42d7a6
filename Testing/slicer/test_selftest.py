"""Sample data and the module's self-test: the example CT is registered with Slicer's SampleData
module from the installed files (offline, SHA256-checked), and the self-test UNETRPlusPlusTest
runs (here on slicer-core) a real segmentation of that CT with the bundled demo model, checking
segment names and Dice against the reference labels."""

from __future__ import annotations

import hashlib
import re
import urllib.request
from pathlib import Path

import pytest
from slicer_support import load_volume

from UNETRPlusPlusLib import sampledata, selftest
from UNETRPlusPlusLib.scene import scene_snapshot
from UNETRPlusPlusLib.segment import SegmentationLogic

pytestmark = pytest.mark.slicer
REPO = Path(__file__).resolve().parents[2]
# Parameters of SampleData.SampleDataLogic.registerCustomSampleDataSource (Slicer 5.10,
# Modules/Scripted/SampleData/SampleData.py)
SAMPLE_DATA_PARAMETERS = {"category", "sampleName", "uris", "fileNames", "nodeNames", "customDownloader",
                          "thumbnailFileName", "loadFileTypes", "loadFiles", "loadFileProperties", "checksums",
                          "loadFileType"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sample_is_registered_offline_with_checksums(tmp_path):
    source = sampledata.sample_source()
    assert source is not None and set(source) <= SAMPLE_DATA_PARAMETERS
    assert source["category"] == "UNETR++"
    assert source["uris"].startswith("file://")
    # what SampleData does: urlretrieve into its cache, then check the checksum (no network)
    copy, _ = urllib.request.urlretrieve(source["uris"], tmp_path / source["fileNames"])
    algo, digest = source["checksums"].split(":")
    assert algo == "SHA256" and sha256(Path(copy)) == digest
    assert sha256(sampledata.examples_dir() / sampledata.LABELS_FILE) == sampledata.LABELS_SHA256
    thumbnail = Path(source["thumbnailFileName"])
    assert thumbnail.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"



def test_cmake_installs_the_sample_and_registers_the_self_test():
    text = (REPO / "UNETRPlusPlus" / "CMakeLists.txt").read_text()
    assert "../Resources/examples" in text and "install(DIRECTORY ${_examples}" in text
    assert re.search(r"if\(BUILD_TESTING\)\s*\n\s*slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", text)
    module = (REPO / "UNETRPlusPlus" / "UNETRPlusPlus.py").read_text()
    assert "registerCustomSampleDataSource" in module or "sampledata.register(" in module
    assert "selftest.run(" in module


@pytest.mark.slow
def test_self_test_segments_the_sample_with_the_demo_model(scene, tmp_path):
    source = sampledata.sample_source()
    path, _ = urllib.request.urlretrieve(source["uris"], tmp_path / source["fileNames"])
    ct = load_volume(scene, Path(path), source["nodeNames"])
    logic = SegmentationLogic(scene)
    before = len(scene_snapshot(scene))
    result, scores = selftest.run(logic, ct, timeout=600)
    from UNETRPlusPlusLib.segment import resolve_model

    names = [result.segmentation_node.GetSegmentation().GetNthSegment(i).GetName()
             for i in range(result.segmentation_node.GetSegmentation().GetNumberOfSegments())]
    assert names == [label.name for label in resolve_model(selftest.DEMO_MODEL).labels]
    for organ, minimum in selftest.MIN_DICE.items():
        assert scores[organ] > minimum, f"{organ}: Dice {scores[organ]:.3f}"
    assert len(scene_snapshot(scene)) > before
    print({k: round(v, 3) for k, v in scores.items()})
