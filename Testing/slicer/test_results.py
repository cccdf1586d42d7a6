"""The results table (issue 19 item 4): per structure its volume, the quality status (coloured),
the reasons on hover and a volume cut by the field of view marked as a lower bound, from the
report keys report["quality"] and segment["quality"] = {"status", "reasons", "uncertainty", "partial"};
the same columns in the table node of a real MRML scene."""

from __future__ import annotations

import pytest

from UNETRPlusPlusLib.results import STATUS_COLOURS, overall_quality, result_rows
from UNETRPlusPlusLib.scene import volume_table

pytestmark = pytest.mark.slicer

REPORT = {
    "quality": {"status": "review", "checks": [
        {"name": "modality", "status": "ok", "message": "CT intensities"},
        {"name": "structures", "status": "review", "message": "Doubtful structures: spleen (uncertain)."}]},
    "segments": [
        {"name": "liver", "value": 6, "voxels": 1000, "volume_ml": 1540.25,
         "quality": {"status": "ok", "reasons": [], "uncertainty": {"inside": 0.05, "border": 0.3,
                                                                    "mirror_disagreement": 0.01}, "partial": False}},
        {"name": "right kidney", "value": 2, "voxels": 100, "volume_ml": 80.0,
         "quality": {"status": "ok", "reasons": [], "uncertainty": None, "partial": True}},
        {"name": "spleen", "value": 1, "voxels": 50, "volume_ml": 266.0,
         "quality": {"status": "review", "reasons": ["uncertain (mean entropy 0.41 inside)",
                                                     "volume 266 mL above the training range"],
                     "uncertainty": {"inside": 0.41, "border": 0.6, "mirror_disagreement": None}, "partial": False}},
        {"name": "aorta", "value": 8, "voxels": 0, "volume_ml": 0.0,
         "quality": {"status": "fail", "reasons": ["not found"], "uncertainty": None, "partial": False}},
    ],
}


def test_rows_status_colour_reasons_partial():
    rows = {r.name: r for r in result_rows(REPORT)}
    liver, kidney, spleen, aorta = rows["liver"], rows["right kidney"], rows["spleen"], rows["aorta"]
    assert (liver.status_text, liver.colour, liver.volume_text) == ("OK", STATUS_COLOURS["ok"], "1540.2")
    assert "0.05" in liver.tooltip
    assert kidney.partial and kidney.volume_text == "\u2265 80.0" and "lower bound" in kidney.tooltip
    assert kidney.status == "ok"  # partial is a flag beside the status, not a reason for doubt
    assert spleen.status_text == "Review" and spleen.colour == STATUS_COLOURS["review"]
    assert spleen.tooltip.splitlines()[:2] == list(REPORT["segments"][2]["quality"]["reasons"])
    assert aorta.status_text == "Fail" and aorta.colour == STATUS_COLOURS["fail"] and "not found" in aorta.tooltip
    status, text = overall_quality(REPORT)
    assert status == "review" and "structures: Doubtful structures: spleen" in text and "modality" not in text


def test_a_report_without_quality_and_malformed_entries():
    rows = result_rows({"segments": [{"name": "liver", "value": 6, "voxels": 3, "volume_ml": 1.5},
                                     {"name": "x", "value": 1, "quality": {"status": "bogus", "reasons": "no list",
                                                                           "partial": "yes"}}, "junk"],
                        "regions": [{"name": "whole tumour", "labels": [1, 2, 3], "voxels": 9, "volume_ml": 2.0}]})
    assert [(r.name, r.status, r.partial, r.reasons) for r in rows] == [
        ("liver", "", False, ()), ("x", "", False, ()), ("whole tumour", "", False, ())]
    assert rows[2].label == "1+2+3" and rows[0].tooltip == ""
    assert overall_quality({}) == ("", "")


def test_table_node_in_a_real_scene(scene):
    table = volume_table(scene, "abdomen volumes", REPORT, "demo-abdomen-ct")
    assert table.GetScene() is scene and table.GetNumberOfRows() == 4
    titles = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    assert titles == ["Segment", "Label", "Voxels", "Volume [mL]", "Quality", "Volume is", "Reasons"]
    assert [table.GetCellText(r, 4) for r in range(4)] == ["OK", "OK", "Review", "Fail"]
    assert table.GetCellText(1, 5).startswith("lower bound") and table.GetCellText(0, 5) == ""
    assert "uncertain" in table.GetCellText(2, 6)
    assert table.GetAttribute("UNETRPlusPlus.quality") == "review"
    plain = volume_table(scene, "old", {"segments": [{"name": "liver", "value": 6}]}, "m")
    assert plain.GetNumberOfColumns() == 4  # an engine without quality: the table as before
