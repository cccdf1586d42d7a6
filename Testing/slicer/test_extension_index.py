"""The extension as the Slicer Extensions Index checks it (Slicer/ExtensionsIndex
scripts/check_description_files.py), offline: the description file against the catalogue-entry
JSON schema, the category, the repository naming rule, the scm_url syntax, the top-level CMake
project() name, icon and screenshot URLs that lead to images in this repository, a licence file at
the root; plus the Slicer conventions the index reviewers ask for (contributors as
"Name (Organisation)", the extension name not starting with "Slicer", the minimum Slicer version)."""

from __future__ import annotations

import json
import re
import urllib.parse as urlparse
from pathlib import Path

import jsonschema
import pytest

REPO = Path(__file__).resolve().parents[2]
RULES_DIR = Path(__file__).resolve().parent / "data" / "extensions_index"
DESCRIPTION = REPO / "docs" / "UNETRPlusPlus.json"
RULES = json.loads((RULES_DIR / "rules.json").read_text())


def cmake_text() -> str:
    return (REPO / "CMakeLists.txt").read_text()


def cmake_value(name: str) -> str:
    # the index's own patterns (check_cmakelists_content)
    m = re.findall(rf'set\s*\({name}\s*"([^"]+)"[ ]*\)', cmake_text(), re.IGNORECASE | re.MULTILINE)
    assert m, f"{name} is not set in CMakeLists.txt"
    return m[0].strip()


def extension_name() -> str:
    return DESCRIPTION.stem


def metadata() -> dict:
    return json.loads(DESCRIPTION.read_text())


def scm_repository() -> tuple[str, str]:
    path = urlparse.urlsplit(metadata()["scm_url"]).path.strip("/")
    owner, name = path.split("/")[:2]
    return owner, name.removesuffix(".git")


def test_description_file_matches_the_catalogue_entry_schema():
    meta = metadata()
    schema_name = meta["$schema"].split("#")[0].rsplit("/", 1)[-1]
    schema = json.loads((RULES_DIR / schema_name).read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(meta, schema)  # raises with the failing field
    assert meta["category"] in RULES["accepted_categories"]
    assert urlparse.urlsplit(meta["scm_url"]).scheme in RULES["scm_url_schemes"] and "://" in meta["scm_url"]
    assert meta["category"] == cmake_value("EXTENSION_CATEGORY")
    assert meta["build_dependencies"] == cmake_value("EXTENSION_DEPENDS").split()


def test_schema_check_catches_a_broken_description():
    """The check is real: the schema rejects what the index would reject."""
    schema = json.loads((RULES_DIR / "slicer-extension-catalog-entry-schema-v1.0.1.json").read_text())
    for broken in ({**metadata(), "tier": 2}, {**metadata(), "homepage": "x"},
                   {k: v for k, v in metadata().items() if k != "scm_url"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)


def test_names_follow_the_index_rules():
    name = extension_name()
    assert not name.lower().startswith("slicer"), "the extension name itself must not start with 'Slicer'"
    # top-level project() equals the description file's name (the index's regex)
    projects = re.findall(r'project\s*\(\s*([^\s\)\n\r]+)', cmake_text(), re.IGNORECASE | re.MULTILINE)
    assert projects and projects[0].strip("\"'") == name
    owner, repo = scm_repository()
    assert "slicer" in repo.lower(), f"repository name '{repo}' must contain 'Slicer' (e.g. Slicer{name})"
    assert repo == f"Slicer{name}"


def test_homepage_icon_and_screenshots_point_to_this_repository():
    owner, repo = scm_repository()
    revision = metadata().get("scm_revision", "main")
    homepage = urlparse.urlsplit(cmake_value("EXTENSION_HOMEPAGE"))
    assert (homepage.scheme, homepage.netloc) == ("https", "github.com")
    assert homepage.path.strip("/") == f"{owner}/{repo}"
    if homepage.fragment:  # a README section anchor that exists
        headings = [re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
                    for h in re.findall(r"^#+\s+(.*)$", (REPO / "README.md").read_text(), re.M)]
        assert homepage.fragment in headings
    urls = [cmake_value("EXTENSION_ICONURL"), *cmake_value("EXTENSION_SCREENSHOTURLS").split()]
    for url in urls:
        parts = urlparse.urlsplit(url)
        assert parts.scheme == "https" and parts.netloc == "raw.githubusercontent.com", url
        url_owner, url_repo, branch, *path = parts.path.strip("/").split("/")
        assert (url_owner, url_repo, branch) == (owner, repo, revision), url
        assert Path(url).suffix.lower() in RULES["image_extensions"]
        local = REPO.joinpath(*path)
        assert local.is_file(), f"{url} would not serve an image: {local} is not in the repository"
        assert local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{local} is not a PNG"


def _contributors(text: str) -> list[str]:
    """Split 'A (X), B (Y, Z)' on the commas outside parentheses."""
    out, depth, current = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            out.append(current.strip())
            current = ""
        else:
            current += ch
    return [*out, current.strip()]


def test_contributors_are_name_and_organisation():
    module = (REPO / "UNETRPlusPlus" / "UNETRPlusPlus.py").read_text()
    module_contributors = re.search(r"parent\.contributors = \[(.*?)\]", module, re.S)
    assert module_contributors
    lists = [cmake_value("EXTENSION_CONTRIBUTORS"),
             ", ".join(re.findall(r'"([^"]+)"', module_contributors.group(1)))]
    for text in lists:
        people = _contributors(text)
        assert people and all(people)
        for person in people:
            assert re.fullmatch(r"[^()]+\S \([^()]+\)", person), f"'{person}' is not 'Name (Organisation)'"


def test_licence_file_at_the_root_is_apache_2():
    found = [n for n in RULES["license_file_names"] if (REPO / n).is_file()]
    assert found, "no licence file at the repository root"
    text = (REPO / found[0]).read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "Apache-2.0" in (REPO / "pyproject.toml").read_text()


def test_minimum_slicer_version_is_stated_consistently():
    """Slicer 5.10 (Python 3.12) is the minimum: 5.8 ships Python 3.9, the engine needs >= 3.10."""
    assert 'set(UNETRPlusPlus_MINIMUM_SLICER_VERSION "5.10")' in cmake_text()
    assert "VERSION_LESS UNETRPlusPlus_MINIMUM_SLICER_VERSION" in cmake_text()
    assert "5.10 or later" in cmake_value("EXTENSION_DESCRIPTION")
    readme = (REPO / "README.md").read_text()
    assert "3D Slicer 5.10 or later" in readme and "Slicer 5.8 or later" not in readme
    assert 'requires-python = ">=3.10"' in (REPO / "pyproject.toml").read_text()


def test_publishing_steps_are_written_down():
    text = (REPO / "docs" / "publishing.md").read_text()
    for needle in ("3d-slicer-extension", "ExtensionsIndex", f"Slicer{extension_name()}", "check_description_files"):
        assert needle in text, needle
