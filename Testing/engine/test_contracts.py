"""The engine's torch-free contract layer, the defaults' one home, the Segmenter and atomic outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from segment_helpers import make_package

CT = "ct/example_ct_sm.nii.gz"

# Runs in a fresh interpreter: what is imported afterwards is what the code itself loaded.
_PROBE = """
import io, sys, contextlib
from unetrpp.cli import main
for argv in ({argvs}):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(argv)
        except SystemExit:
            pass
    assert out.getvalue().strip(), argv
import unetrpp, unetrpp.manifest, unetrpp.catalogue, unetrpp.terminology, unetrpp.progress, unetrpp.errors
import unetrpp.network, unetrpp.atomic
print(sorted(m for m in ("torch", "jsonschema", "safetensors", "scipy") if m in sys.modules))
"""


def _probe(argvs: str, tmp_path) -> list[str]:
    env = {**os.environ, "UNETRPP_HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", _PROBE.format(argvs=argvs)], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1].replace("'", '"'))


def test_contract_layer_help_and_model_listing_load_no_torch(tmp_path):
    loaded = _probe("['--help'], ['segment', '--help'], ['models'], ['models', '--json']", tmp_path)
    assert "torch" not in loaded and "jsonschema" not in loaded and "safetensors" not in loaded, loaded


def test_compute_api_still_reachable_from_the_package_root():
    import unetrpp

    assert callable(unetrpp.load) and callable(unetrpp.save_package) and unetrpp.Segmenter.__name__ == "Segmenter"
    with pytest.raises(AttributeError):
        unetrpp.no_such_name  # noqa: B018


def test_every_plan_and_inference_default_lives_in_the_manifest_module(tiny_synapse_package):
    from unetrpp.manifest import SCHEMA_VERSION, InferenceDefaults, Plan, manifest_schema, read_manifest
    from unetrpp.official_models import official_manifest

    schema = manifest_schema()
    for section in ("plan", "inference"):
        props = schema["properties"][section]["properties"]
        assert not [k for k, v in props.items() if "default" in v], f"schema {section} must not carry defaults"
    manifest = read_manifest(tiny_synapse_package)
    assert manifest.data["schema_version"] == SCHEMA_VERSION
    plan = manifest.preprocessing_plan
    assert (plan.crop_to_nonzero, plan.image_order, plan.label_order, plan.separate_z_order) == (True, 3, 1, 0)
    assert plan.anisotropy_threshold == 3 and plan.orientation is None
    assert manifest.plan["image_order"] == Plan.image_order  # filled from the dataclass
    inf = manifest.inference_defaults
    assert inf == InferenceDefaults() and (inf.overlap, inf.mirror_axes, inf.gaussian_sigma_scale) == (0.5, (0, 1, 2), 0.125)
    # official manifests are built with the same defaults and schema version
    built = official_manifest("synapse")
    assert built["schema_version"] == SCHEMA_VERSION
    assert built["inference"] == {"overlap": 0.5, "mirror_axes": [0, 1, 2], "gaussian_sigma_scale": 0.125}


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    from unetrpp import Segmenter

    return Segmenter(make_package(tmp_path_factory.mktemp("pkg") / "synapse-tiny"), device="cpu")


def test_segmenter_loads_once_and_runs_twice_identically(segmenter, data_dir, tmp_path):
    from unetrpp.image import read_image
    from unetrpp.outputs import OutputPlan
    from unetrpp.pipeline import SegmentOptions, segment
    from unetrpp.progress import Event

    network = segmenter.model.network
    events: list[Event] = []
    first = segmenter.run(data_dir / CT, fast=True, sink=events.append)
    assert "load_model" in first.report["timing_s"]  # the first run reports the load
    second = segmenter.run({"CT": read_image(data_dir / CT)}, fast=True)  # alias, in-memory image
    assert "load_model" not in second.report["timing_s"]
    assert segmenter.model.network is network
    np.testing.assert_array_equal(first.labelmap.array, second.labelmap.array)
    assert [e.stage for e in events if e.event == "stage"] == ["read", "preprocess", "predict", "postprocess"]
    assert first.outputs == {} and not list(tmp_path.iterdir())  # run() writes nothing

    plan = OutputPlan.create(tmp_path / "ct.mha", probabilities=tmp_path / "p.nii.gz")
    done = segmenter.segment(data_dir / CT, plan, fast=True, sink=events.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.mha", "ct.report.json", "p.nii.gz"]
    np.testing.assert_array_equal(read_image(tmp_path / "ct.mha").array, first.labelmap.array)
    assert events[-1].event == "done" and events[-1].outputs == done.outputs
    report = json.loads((tmp_path / "ct.report.json").read_text())
    assert report["timing_s"]["write"] > 0 and report == json.loads(json.dumps(done.report))
    # the script front gives the same labels
    again = segment(segmenter, data_dir / CT, SegmentOptions(fast=True))
    np.testing.assert_array_equal(again.labelmap.array, first.labelmap.array)


def test_one_request_one_call_and_the_optimized_network_built_once(segmenter, data_dir, tmp_path):
    """Issue 18: `Segmenter.segment(request, plan)`; the optimized network is built once per device
    and dtype and reused by every run (it was rebuilt on every call); the faithful network's
    output is unchanged by it."""
    import torch

    from unetrpp.outputs import OutputPlan
    from unetrpp.predict import predict_probabilities
    from unetrpp.request import SegmentRequest

    request = segmenter.request(data_dir / CT, fast=True, roi=None)
    assert isinstance(request, SegmentRequest) and request.model == segmenter.manifest.name
    first = segmenter.segment(request, OutputPlan.create(tmp_path / "a.nii.gz", request=request))
    module = segmenter.network_for(segmenter.device)
    assert module is not segmenter.model.network  # the fast copy
    second = segmenter.segment(request, None)
    assert segmenter.network_for(segmenter.device) is module  # built once, kept
    assert first.request is request and second.outputs == {}
    np.testing.assert_array_equal(first.labelmap.array, second.labelmap.array)
    x = torch.rand(1, *segmenter.manifest.network_config.patch_size)
    kwargs = dict(patch_size=segmenter.manifest.network_config.patch_size, mirror_axes=(), device="cpu")
    fast = predict_probabilities(module, x, optimize=False, **kwargs)
    faithful = predict_probabilities(segmenter.model.network, x, optimize=False, **kwargs)
    torch.testing.assert_close(fast, faithful, rtol=1e-4, atol=1e-5)
    with pytest.raises(TypeError, match="belong in the request"):
        segmenter.segment(request, None, fast=False)


def test_segmenter_cancel_and_existing_outputs_leave_nothing(segmenter, data_dir, tmp_path):
    from unetrpp.errors import CancelledError, OutputExistsError
    from unetrpp.outputs import OutputPlan

    plan = OutputPlan.create(tmp_path / "ct.seg.nrrd")
    stop = threading.Event()

    def sink(event):
        if event.event == "stage" and event.stage == "write":
            stop.set()  # cancelled while writing: the staged files must not appear

    with pytest.raises(CancelledError):
        segmenter.segment(data_dir / CT, plan, fast=True, sink=sink, cancel=stop)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "ct.seg.nrrd").write_bytes(b"earlier result")
    with pytest.raises(OutputExistsError):
        OutputPlan.create(tmp_path / "ct.seg.nrrd")
    with pytest.raises(OutputExistsError):  # a file that appeared after planning is not replaced
        segmenter.segment(data_dir / CT, plan, fast=True)
    assert (tmp_path / "ct.seg.nrrd").read_bytes() == b"earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.seg.nrrd"]


def test_atomic_helpers(tmp_path):
    from unetrpp.atomic import StagedOutputs, remove_path, replace_path, staged_file, write_text
    from unetrpp.errors import OutputExistsError

    target = tmp_path / "a.txt"
    write_text(target, "one")
    with pytest.raises(OutputExistsError):
        write_text(target, "two", overwrite=False)
    with pytest.raises(RuntimeError):
        with staged_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "one" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    with pytest.raises(ValueError):
        with StagedOutputs() as staging:
            staging.path_for(tmp_path / "b.txt").write_text("b")
            raise ValueError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    with StagedOutputs() as staging:
        staging.path_for(tmp_path / "b.txt").write_text("b")
        staging.path_for(tmp_path / "c.txt").write_text("c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt", "c.txt"]
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "x").write_text("old")
    new = tmp_path / ".new"
    new.mkdir()
    (new / "x").write_text("new")
    with pytest.raises(OutputExistsError):
        replace_path(new, folder)
    replace_path(new, folder, overwrite=True)
    assert (folder / "x").read_text() == "new" and not new.exists()
    remove_path(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt", "c.txt"]
