"""The GUI state object: input assignment from volume names / DICOM series descriptions, the
reasons Segment is disabled, progress and model texts. Pure Python: no Qt needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from UNETRPlusPlusLib.modelstore import catalogue_models, model_from_manifest
from UNETRPlusPlusLib.state import GuiState, VolumeInfo, alias_score, auto_assign, format_duration

pytestmark = pytest.mark.slicer
REPO = Path(__file__).resolve().parents[2]


def official(variant: str, installed: bool = True):
    from unetrpp.official_models import official_manifest

    path = REPO if installed else None  # any existing path: "installed"
    return model_from_manifest(official_manifest(variant), path, installed=installed)


def vol(i: int, name: str, series: str = "", dims=(64, 64, 30), comps: int = 1, labelmap=False, modality=""):
    return VolumeInfo(f"vtkMRMLScalarVolumeNode{i}", name, series, dims, comps, labelmap, modality)


def test_brats_2023_file_names_are_assigned():
    m = official("brats")
    vols = [vol(1, "t2w"), vol(2, "t1c"), vol(3, "t2f"), vol(4, "t1n")]
    got = auto_assign(m.inputs, vols)
    assert got == {"t2": vols[0].id, "t1gd": vols[1].id, "flair": vols[2].id, "t1": vols[3].id}


def test_unregistered_tcga_names_and_missing_input():
    m = official("brats")
    vols = [vol(1, "TCGA-FG-6692-fla"), vol(2, "TCGA-FG-6692-t1c"), vol(3, "TCGA-FG-6692-t2")]
    got = auto_assign(m.inputs, vols)
    assert got == {"flair": vols[0].id, "t1gd": vols[1].id, "t2": vols[2].id}
    state = GuiState()
    state.set_volumes(vols)
    state.set_models([m])
    enabled, reason = state.segment_enabled()
    assert not enabled and "Select a volume for input 't1'" in reason


def test_dicom_series_descriptions_are_used_and_post_contrast_beats_plain_t1():
    m = official("brats")
    vols = [vol(1, "5: AX T1 POST GD", "AX T1 POST GD"), vol(2, "3: Series 3", "AX T1 PRE"),
            vol(3, "7: Series 7", "Axial FLAIR"), vol(4, "9: Series 9", "Ax T2 FSE")]
    got = auto_assign(m.inputs, vols)
    assert got == {"t1gd": vols[0].id, "t1": vols[1].id, "flair": vols[2].id, "t2": vols[3].id}
    assert alias_score("T1 post contrast", m.inputs[2]) > alias_score("T1 post contrast", m.inputs[1]) > 0
    assert alias_score("t2 flair", m.inputs[0]) == len("flair")


def test_manual_choice_is_kept_and_single_input_takes_latest_volume():
    ct = official("synapse")
    vols = [vol(1, "abdomen"), vol(2, "abdomen 2"), vol(3, "seg", labelmap=True)]
    assert auto_assign(ct.inputs, vols) == {"ct": vols[1].id}  # most recent usable, never the labelmap
    assert auto_assign(ct.inputs, vols, keep={"ct": vols[0].id}) == {"ct": vols[0].id}
    assert auto_assign(ct.inputs, vols, keep={"ct": "vtkMRMLScalarVolumeNode99"}) == {"ct": vols[1].id}


@pytest.mark.parametrize(
    "volume, expected",
    [
        (vol(1, "slice", dims=(512, 512, 1)), "is a 2D image"),
        (vol(1, "cine", comps=30), "30 values per voxel"),
        (vol(1, "labels", labelmap=True), "is a labelmap"),
        (vol(1, "mr", modality="MR"), "is a MR scan but input 'ct' of this model expects CT"),
        (vol(1, "empty", dims=(0, 0, 0)), "has no image data"),
    ],
)
def test_bad_volumes_disable_segment_with_a_reason(volume, expected):
    state = GuiState()
    state.set_models([official("synapse")])
    state.set_volumes([volume])
    state.assign("ct", volume.id)
    enabled, reason = state.segment_enabled()
    assert not enabled and expected in reason


def test_same_volume_twice_and_missing_dependencies_and_not_installed():
    state = GuiState()
    state.set_models([official("brats")])
    vols = [vol(i, f"v{i}") for i in range(1, 5)]
    state.set_volumes(vols)
    for name, v in zip(("flair", "t1", "t1gd", "t2"), vols):
        state.assign(name, v.id)
    assert state.segment_enabled() == (True, "Segment with " + state.model.title)
    state.assign("t2", vols[0].id)
    enabled, reason = state.segment_enabled()
    assert not enabled and "selected for both 'flair' and 't2'" in reason
    state.assign("t2", vols[3].id)
    state.missing_dependencies = ["torch", "monai"]
    assert "Missing Python packages: torch, monai" in state.segment_enabled()[1]
    state.missing_dependencies = []
    catalogue = catalogue_models(REPO / "Resources" / "models.json")
    state.set_models(catalogue)
    state.select_model("brats-official")
    enabled, reason = state.segment_enabled()
    assert not enabled and "not installed" in reason and "Install from file" in reason
    assert state.required_inputs() == ()
    info = state.model_info_text()
    assert "drive.google.com" in info and "Install from file" in info and "variant 'brats'" in info


def test_progress_text_button_and_overall_percent():
    state = GuiState()
    state.set_models([official("synapse")])
    assert state.button_text() == "Segment" and state.progress_text() == "Ready"
    state.start_run()
    assert state.button_text() == "Cancel" and state.segment_enabled()[0]
    percents = [state.overall_percent()]
    for stage in ("read", "preprocess"):
        state.apply_event({"event": "stage", "stage": stage, "message": "x"})
        percents.append(state.overall_percent())
    state.apply_event({"event": "stage", "stage": "predict", "message": "sliding window"})
    state.apply_event({"event": "progress", "stage": "predict", "done": 5, "total": 10, "fraction": 0.5, "eta_s": 83.4})
    assert state.progress_text() == "Running UNETR++ 50%, about 1 min 23 s left"
    percents.append(state.overall_percent())
    state.apply_event({"event": "progress", "stage": "predict", "done": 10, "total": 10, "eta_s": 0.0})
    percents.append(state.overall_percent())
    state.apply_event({"event": "log", "level": "warning", "message": "inputs resampled"})
    assert percents == sorted(percents) and 0 <= percents[0] < percents[-1] <= 100
    assert "Warning: inputs resampled" in state.log
    state.cancelling = True
    assert state.button_text() == "Cancelling..." and not state.segment_enabled()[0]
    state.finish_run(error="Segmentation cancelled; the scene was not changed.")
    assert state.progress_text().startswith("Failed: Segmentation cancelled") and state.button_text() == "Segment"
    state.start_run()
    state.finish_run(message="Done in 3.0 s")
    assert state.overall_percent() == 100 and state.progress_text() == "Done"


def test_model_info_lists_inputs_labels_size_licence():
    state = GuiState()
    state.set_models([official("brats")])
    info = state.model_info_text()
    for text in ("flair (MR)", "t1gd (MR)", "Labels (3): oedema, non-enhancing tumour, enhancing tumour",
                 "Regions: whole tumour", "Licence: Apache-2.0", "Size:"):
        assert text in info
    assert format_duration(3725) == "1 h 02 min" and format_duration(None) == ""


@pytest.mark.parametrize("event", [
    {"event": "progress", "stage": "predict", "fraction": "abc"},
    {"event": "progress", "stage": "predict", "fraction": float("nan")},
    {"event": "progress", "stage": "predict", "fraction": float("inf"), "eta_s": float("-inf")},
    {"event": "progress", "stage": "predict", "done": 3, "total": 0},
    {"event": "progress", "stage": "predict", "done": "x", "total": "y"},
    {"event": "progress", "stage": "predict", "fraction": 0.5, "eta_s": "soon"},
    {"event": "progress", "stage": "predict", "fraction": [1], "eta_s": {"s": 1}},
    {"event": "progress", "stage": "predict", "fraction": True, "eta_s": -5},
    {"event": "progress", "stage": "predict", "fraction": 1e400, "eta_s": float("nan")},
])
def test_malformed_progress_events_do_not_raise_and_bad_eta_does_not_stick(event):
    state = GuiState()
    state.start_run()
    state.apply_event({"event": "progress", "stage": "predict", "fraction": 0.25, "eta_s": 90})
    assert state.progress_text() == "Running UNETR++ 25%, about 1 min 30 s left"
    state.apply_event(event)
    text = state.progress_text()  # must not raise
    assert "about" not in text  # no ETA shown from a malformed or missing value
    assert 0 <= state.overall_percent() <= 100
    if state.fraction is not None:
        assert 0.0 <= state.fraction <= 1.0
    # the next good event is shown as it is, nothing of the bad one remains
    state.apply_event({"event": "progress", "stage": "predict", "fraction": 0.75, "eta_s": 12})
    assert state.progress_text() == "Running UNETR++ 75%, about 12 s left"
    state.apply_event({"event": "progress", "stage": "predict", "done": 1, "total": 4})
    assert state.progress_text() == "Running UNETR++ 25%"


def test_gpu_choice_when_several_gpus_exist():
    from UNETRPlusPlusLib.parameters import Parameters, parameter_node
    from UNETRPlusPlusLib.process import GpuProbe
    from UNETRPlusPlusLib.state import device_choices, valid_device

    assert [v for v, _ in device_choices([])] == ["auto", "cuda", "cpu"]
    assert device_choices(["NVIDIA H200"])[1] == ("cuda", "GPU (NVIDIA H200)")
    several = device_choices(["NVIDIA A100", "NVIDIA T4"])
    assert [v for v, _ in several] == ["auto", "cuda:0", "cuda:1", "cpu"]
    assert several[2][1] == "GPU 1: NVIDIA T4"
    assert all(valid_device(v) for v, _ in several) and not valid_device("cuda:x") and not valid_device("gpu")
    import slicer

    scene = slicer.vtkMRMLScene()
    params = Parameters(parameter_node(scene))
    params.device = "cuda:1"
    assert params.device == "cuda:1"
    params.device = "rm -rf"
    assert params.device == "auto"
    # the real probe in the engine's Python: names of the GPUs torch sees (none on this machine)
    import torch

    assert GpuProbe().wait() == [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def test_cancelled_variant_dialog_installs_nothing():
    from UNETRPlusPlusLib.state import official_variant_choice

    variants = ("synapse", "acdc", "brats", "lung")
    assert official_variant_choice(False, "synapse", variants) is None  # Cancel (text = first item)
    assert official_variant_choice(True, "acdc", variants) == "acdc"
    assert official_variant_choice(True, "", variants) is None


def test_official_checkpoint_links_are_clickable_and_package_text_is_escaped():
    m = next(x for x in catalogue_models() if x.url.startswith("https://") and not x.installed and not x.downloadable)
    state = GuiState()
    state.set_models([m])
    text = state.model_info_text()
    assert f'<a href="{m.url}">{m.url}</a>' in text
    from dataclasses import replace

    hostile = replace(m, title="<img src=x onerror=alert(1)>", description="<script>x</script>",
                      url="javascript:alert(1)")
    state.set_models([hostile])
    text = state.model_info_text()
    assert "<img" not in text and "<script>" not in text and 'href="javascript' not in text
    assert "&lt;script&gt;" in text


def test_an_error_event_is_logged_with_its_category():
    state = GuiState()
    state.start_run()
    state.apply_event({"event": "error", "category": "resource", "kind": "MemoryError", "message": "out of memory"})
    state.apply_event({"event": "error", "kind": "IntegrityError", "message": "SHA256 mismatch"})  # older engine
    assert state.log[-2:] == ["Error (resource): out of memory", "Error (model): SHA256 mismatch"]
