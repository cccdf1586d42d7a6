"""Model catalogue and cache: real downloads from a local HTTP server (127.0.0.1 only), SHA256
checks before unpacking, atomic installs, offline installs, removal and the `unetrpp models` CLI."""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import threading
import zipfile
from pathlib import Path

import pytest

from unetrpp import catalogue
from unetrpp.cli import main as cli_main
from unetrpp.errors import IntegrityError, OutputExistsError, PackageError
from unetrpp.progress import Event

REPO = Path(__file__).resolve().parents[2]


class _Handler(http.server.SimpleHTTPRequestHandler):
    truncated: set[str] = set()

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):  # noqa: N802
        name = self.path.lstrip("/")
        if name in self.truncated:  # announce the full size, send half, hang up
            data = (Path(self.directory) / name).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture()
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = type("H", (_Handler,), {"truncated": set()})

    def make(*args, **kwargs):
        return handler(*args, directory=str(root), **kwargs)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", handler.truncated
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("UNETRPP_HOME", str(h))
    monkeypatch.setenv("UNETRPP_BUNDLED_MODELS", "")  # the shipped demo model stays out of these lists
    return h


@pytest.fixture(scope="module")
def package_zip(tmp_path_factory, tiny_synapse_package) -> Path:
    out = tmp_path_factory.mktemp("zip") / "synapse-tiny-test.zip"
    with zipfile.ZipFile(out, "w") as zf:
        for f in sorted(tiny_synapse_package.iterdir()):
            zf.write(f, f.name)
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _entry(url: str, sha: str | None, size: int | None, name: str = "synapse-tiny-test") -> catalogue.CatalogueEntry:
    return catalogue.CatalogueEntry(
        name=name, version="1.0.0", title="tiny", summary="test package", url=url, sha256=sha, size=size,
        variant="synapse", inputs=("ct",), licence="test",
    )


def _leftovers(home: Path) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in home.rglob("*")) if home.exists() else []


def test_shipped_catalogue_lists_official_checkpoints_honestly():
    entries = catalogue.load_catalogue(REPO / "Resources" / "models.json")
    by_name = {e.name: e for e in entries}
    assert {"synapse-official", "acdc-official", "lung-official", "brats-official"} <= set(by_name)
    from unetrpp.official_models import OFFICIAL_CHECKPOINT_URLS, official_manifest

    for e in entries:
        assert e.format == "official-checkpoint"
        assert e.sha256 is None and not e.downloadable  # nobody published a checksum: never fake one
        assert e.url == OFFICIAL_CHECKPOINT_URLS[e.variant]
        assert list(e.inputs) == [i["name"] for i in official_manifest(e.variant)["inputs"]]
        assert "import it from file" in e.install_hint and f"--official {e.variant}" in e.install_hint
    with pytest.raises(catalogue.CatalogueError, match="cannot be downloaded automatically"):
        catalogue.install_from_catalogue("synapse-official", entries)


def test_catalogue_rejects_malformed_entries(tmp_path):
    bad = tmp_path / "models.json"
    bad.write_text(json.dumps({"schema_version": 1, "models": [{"name": "x", "version": "1", "summary": "s",
                                                                 "variant": "synapse", "inputs": [], "licence": "l",
                                                                 "sha256": "1234"}]}))
    with pytest.raises(catalogue.CatalogueError, match="sha256"):
        catalogue.load_catalogue(bad)
    bad.write_text("{")
    with pytest.raises(catalogue.CatalogueError, match="not valid JSON"):
        catalogue.load_catalogue(bad)


def test_download_verifies_then_installs(server, home, package_zip):
    root, base, _ = server
    shutil.copy(package_zip, root / "pkg.zip")
    events: list[Event] = []
    entry = _entry(f"{base}/pkg.zip", _sha(package_zip), package_zip.stat().st_size)
    path = catalogue.install_from_catalogue(entry.name, [entry], sink=events.append)
    assert path == home / "models" / "synapse-tiny-test"
    assert (path / "model.json").is_file() and (path / "weights.safetensors").is_file()
    assert [m.name for m in catalogue.installed_models()] == ["synapse-tiny-test"]
    progress = [e for e in events if e.event == "progress"]
    assert progress and progress[-1].done == progress[-1].total == package_zip.stat().st_size
    assert progress[-1].stage == "download"
    cached = home / "downloads" / "synapse-tiny-test-1.0.0.zip"
    assert _sha(cached) == entry.sha256
    assert catalogue.resolve_model("synapse-tiny-test") == path
    # Installed again: refused unless overwriting; overwrite re-uses the verified cached download.
    with pytest.raises(OutputExistsError, match="already installed"):
        catalogue.install_from_catalogue(entry.name, [entry])
    (root / "pkg.zip").unlink()  # the server no longer has it: the cache must be used
    assert catalogue.install_from_catalogue(entry.name, [entry], overwrite=True) == path


def test_sha256_mismatch_removes_download_and_installs_nothing(server, home, package_zip):
    root, base, _ = server
    shutil.copy(package_zip, root / "pkg.zip")
    entry = _entry(f"{base}/pkg.zip", "0" * 64, None)
    with pytest.raises(IntegrityError, match="SHA256"):
        catalogue.install_from_catalogue(entry.name, [entry])
    left = _leftovers(home)
    assert not [p for p in left if p.startswith("downloads/") or p.startswith("models/")], left


def test_interrupted_download_leaves_nothing_and_restarts_from_scratch(server, home, package_zip):
    root, base, truncated = server
    shutil.copy(package_zip, root / "pkg.zip")
    entry = _entry(f"{base}/pkg.zip", _sha(package_zip), package_zip.stat().st_size)
    truncated.add("pkg.zip")
    with pytest.raises((PackageError, IntegrityError)):
        catalogue.install_from_catalogue(entry.name, [entry])
    assert not [p for p in _leftovers(home) if p not in ("downloads", "models")]
    truncated.clear()
    assert catalogue.install_from_catalogue(entry.name, [entry]).is_dir()


def test_http_error_is_reported(server, home):
    _, base, _ = server
    entry = _entry(f"{base}/missing.zip", "a" * 64, None)
    with pytest.raises(PackageError, match="HTTP 404"):
        catalogue.install_from_catalogue(entry.name, [entry])
    assert not [p for p in _leftovers(home) if p not in ("downloads", "models")]


def test_offline_install_folder_and_zip_and_remove(home, tiny_synapse_package, package_zip):
    path = catalogue.install_package(tiny_synapse_package)
    assert catalogue.installed_path("synapse-tiny-test") == path
    m = catalogue.installed_models()[0]
    assert m.inputs == ("ct",) and m.labels[0] == "spleen" and m.size > 0
    catalogue.remove_model("synapse-tiny-test")
    assert catalogue.installed_models() == []
    with pytest.raises(PackageError, match="no installed model"):
        catalogue.remove_model("synapse-tiny-test")
    assert catalogue.install_package(package_zip, expected_sha256=_sha(package_zip)).is_dir()
    with pytest.raises(IntegrityError):
        catalogue.install_package(package_zip, expected_sha256="f" * 64, overwrite=True)


def test_corrupt_package_is_refused_and_nothing_installed(home, tmp_path, tiny_synapse_package):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_synapse_package, bad)
    data = bytearray((bad / "weights.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (bad / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="SHA256"):
        catalogue.install_package(bad)
    assert catalogue.installed_models() == []
    assert [p.name for p in (home / "models").iterdir()] == []  # no staging folder left behind


def test_zip_with_foreign_paths_is_refused(home, tmp_path, tiny_synapse_package):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        for f in tiny_synapse_package.iterdir():
            zf.write(f, f.name)
        zf.writestr("../../escape.txt", "x")
    with pytest.raises(PackageError, match="not a plain model package"):
        catalogue.install_package(evil)
    assert not (tmp_path / "escape.txt").exists() and catalogue.installed_models() == []


def test_cli_models_list_install_remove(home, tiny_synapse_package, capsys):
    assert cli_main(["models", "install", str(tiny_synapse_package)]) == 0
    assert "installed synapse-tiny-test" in capsys.readouterr().out
    assert cli_main(["models", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["home"] == str(home)
    assert [m["name"] for m in listing["installed"]] == ["synapse-tiny-test"]
    assert {e["name"] for e in listing["catalogue"]} >= {"synapse-official"}
    assert all(e["downloadable"] is False for e in listing["catalogue"])
    assert cli_main(["models", "install", str(tiny_synapse_package)]) == 2  # already installed
    assert "already installed" in capsys.readouterr().err
    assert cli_main(["models", "install", "synapse-official", "--progress", "json"]) == 2
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[-1]["event"] == "error" and "import it from file" in lines[-1]["message"]
    assert lines[-1]["category"] == "model"  # errors.classify, as every entry point's error event
    assert cli_main(["models", "remove", "synapse-tiny-test"]) == 0
    assert cli_main(["models", "remove", "synapse-tiny-test"]) == 2


def test_bundled_models_are_used_in_place_listed_and_not_removable(home, tmp_path, tiny_synapse_package,
                                                                    monkeypatch, capsys):
    bundled = tmp_path / "bundled"
    shutil.copytree(tiny_synapse_package, bundled / "synapse-tiny-test")
    monkeypatch.setenv("UNETRPP_BUNDLED_MODELS", str(bundled))
    assert catalogue.installed_models() == []
    assert [m.name for m in catalogue.bundled_models()] == ["synapse-tiny-test"]
    assert catalogue.resolve_model("synapse-tiny-test") == bundled / "synapse-tiny-test"
    with pytest.raises(PackageError, match="bundled .* cannot be removed"):
        catalogue.remove_model("synapse-tiny-test")
    assert (bundled / "synapse-tiny-test" / "model.json").is_file()
    # an installed model of the same name takes precedence
    installed = catalogue.install_package(tiny_synapse_package)
    assert catalogue.resolve_model("synapse-tiny-test") == installed
    assert cli_main(["models", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in listing["bundled"]] == ["synapse-tiny-test"]


def test_the_source_checkout_bundles_the_demo_model(monkeypatch):
    monkeypatch.delenv("UNETRPP_BUNDLED_MODELS", raising=False)
    assert catalogue.bundled_models_dir() == REPO / "Resources" / "models"
    assert catalogue.resolve_model("demo-abdomen-ct") == REPO / "Resources" / "models" / "demo-abdomen-ct"
