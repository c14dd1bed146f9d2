"""tools/offline_plots.py: DVC's plots page with the vega scripts inlined, on fake npm tarballs (no network)."""

from __future__ import annotations

import importlib.util
import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from mnist_mlp.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("offline_plots", ROOT / "tools" / "offline_plots.py")
offline_plots = importlib.util.module_from_spec(spec)
spec.loader.exec_module(offline_plots)


def fake_tarball(folder: Path, name: str, version: str, code: str) -> None:
    """What `npm pack` leaves: <name>-<version>.tgz holding package/package.json and the browser build."""
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / f"{name}-{version}.tgz", "w:gz") as archive:
        for path, text in (
            ("package/package.json", json.dumps({"name": name, "jsdelivr": f"build/{name}.min.js"})),
            (f"package/build/{name}.min.js", code),
        ):
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


@pytest.fixture
def packs(tmp_path: Path) -> Path:
    folder = tmp_path / "packs"
    for name, version in offline_plots.specs():
        fake_tarball(folder, name, version, f'window["{name}"] = "{version}"; var s = "</script>";')
    return folder


def test_the_scripts_are_those_dvcs_own_page_loads():
    from dvc_render.vega import VegaRenderer

    names = [name for name, _ in offline_plots.specs()]
    assert names == ["vega", "vega-lite", "vega-embed"]  # in the order they depend on each other
    for name, version in offline_plots.specs():
        assert f"https://cdn.jsdelivr.net/npm/{name}@{version}" in VegaRenderer.SCRIPTS


def test_the_page_inlines_every_script_and_keeps_dvcs_placeholder(packs: Path):
    page = offline_plots.page(packs)
    assert "{plot_divs}" in page and "{scripts}" not in page
    assert not re.search(r"<script[^>]+src=", page)
    positions = [page.index(f'window["{name}"] = "{version}"') for name, version in offline_plots.specs()]
    assert positions == sorted(positions)
    assert '</script>";' not in page and '<\\/script>";' in page  # the code's own "</script>" cannot end the element


def test_a_missing_tarball_names_the_npm_command(packs: Path):
    name, version = offline_plots.specs()[-1]
    (packs / f"{name}-{version}.tgz").unlink()
    with pytest.raises(
        UserError, match=rf"no tarball of {name}@{version}; fetch with `npm pack --pack-destination {packs} "
    ):
        offline_plots.page(packs)


def test_code_containing_a_dvc_placeholder_is_refused(packs: Path):
    name, version = offline_plots.specs()[0]
    fake_tarball(packs, name, version, 'var t = "{plot_divs}";')
    with pytest.raises(UserError, match=r"contains one of \{scripts\}, \{plot_divs\}, \{refresh_tag\}"):
        offline_plots.page(packs)


@pytest.mark.integration
def test_dvc_plots_show_with_the_template_loads_nothing_from_the_network(project: Path, packs: Path):
    reports = project / "reports"
    reports.mkdir()
    (reports / "training_log.csv").write_text(
        "epoch,train_loss,val_loss,train_accuracy,val_accuracy\n1,0.5,0.4,0.8,0.85\n2,0.3,0.3,0.9,0.9\n"
    )
    (reports / "predictions.csv").write_text("actual,predicted\n1,1\n2,7\n")
    template = project / "build" / "plots" / "offline.html"
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "offline_plots.py"), "build", str(packs), str(template)],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), "plots", "show", "--html-template", str(template)],
        cwd=project,
        check=True,
        capture_output=True,
    )
    page = (project / "dvc_plots" / "index.html").read_text()
    assert all(f"vegaEmbed('#{name}'" in page for name in ("loss", "accuracy", "confusion"))  # dvc.yaml's plots
    assert 'window["vega-embed"] = "' in page
    assert not re.search(r"<script[^>]+src=[\"']?https?://", page)
    assert "cdn.jsdelivr.net" not in page
