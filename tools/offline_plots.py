"""An offline page template for `dvc plots show`: DVC's own page with vega, vega-lite and vega-embed inlined.

DVC's page loads those three scripts from cdn.jsdelivr.net, so offline its plots stay blank. `make plots`
asks this script which versions DVC's page names, fetches them once from the npm registry (`npm pack`),
builds the template from the tarballs and passes it to `dvc plots show --html-template`:

    python tools/offline_plots.py specs [--missing-in FOLDER]   name@version of each script DVC loads
    python tools/offline_plots.py build FOLDER OUT              OUT: DVC's page, FOLDER's scripts inlined
"""

from __future__ import annotations

import argparse
import json
import re
import tarfile
from pathlib import Path

from dvc_render.html import PAGE_HTML
from dvc_render.vega import VegaRenderer

from mnist_mlp import files
from mnist_mlp.errors import UserError
from mnist_mlp.project import run_cli

CDN_SCRIPT = re.compile(r'<script src="https://cdn\.jsdelivr\.net/npm/([^"@]+)@([^"/]+)"></script>')
PLACEHOLDERS = ("{scripts}", "{plot_divs}", "{refresh_tag}")  # DVC replaces these anywhere in the page


def specs() -> list[tuple[str, str]]:
    """(package, version) of each script DVC's page loads, in its order."""
    found = CDN_SCRIPT.findall(VegaRenderer.SCRIPTS)
    if not found:
        raise UserError(
            "dvc_render's page loads no jsdelivr npm scripts any more; tools/offline_plots.py needs an update"
        )
    return found


def tarball(folder: Path, name: str, version: str) -> Path:
    return folder / f"{name}-{version}.tgz"  # the name `npm pack` gives it


def inline_script(path: Path) -> str:
    """A <script> element with the package's browser build: package.json's `jsdelivr` file, as the CDN serves it."""
    try:
        with tarfile.open(path) as archive:
            entry = json.load(archive.extractfile("package/package.json"))["jsdelivr"]
            code = archive.extractfile(f"package/{entry.removeprefix('./')}").read().decode("utf-8")
    except (OSError, KeyError, ValueError, tarfile.TarError) as exc:
        raise UserError(f"{path}: not an npm tarball with a `jsdelivr` browser build ({exc})") from None
    if any(placeholder in code for placeholder in PLACEHOLDERS):
        raise UserError(f"{path}: the script contains one of {', '.join(PLACEHOLDERS)}, which DVC would replace")
    # "</script" inside the code would end the element early; "<\/" means the same to JavaScript
    code = re.sub(r"</(script)", r"<\\/\1", code, flags=re.IGNORECASE)
    return f"<script>\n{code}\n</script>"


def page(folder: Path) -> str:
    """DVC's page (with its {plot_divs} placeholder) whose CDN scripts are the tarballs' code, inline."""
    missing = [f"{name}@{version}" for name, version in specs() if not tarball(folder, name, version).is_file()]
    if missing:
        raise UserError(
            f"{folder}: no tarball of {', '.join(missing)}; fetch with "
            f"`npm pack --pack-destination {folder} {' '.join(missing)}` (`make plots` does)"
        )
    return PAGE_HTML.replace("{scripts}", "\n".join(inline_script(tarball(folder, *spec)) for spec in specs()))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python tools/offline_plots.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("specs", help="name@version of each script DVC's page loads")
    listing.add_argument("--missing-in", type=Path, help="only those without a tarball in this folder")
    build = commands.add_parser("build", help="write the template")
    build.add_argument("folder", type=Path, help="the `npm pack` tarballs")
    build.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.command == "specs":
        folder = args.missing_in
        print(" ".join(f"{n}@{v}" for n, v in specs() if folder is None or not tarball(folder, n, v).is_file()))
    else:
        files.write_bytes(args.out, page(args.folder).encode("utf-8"))


if __name__ == "__main__":
    run_cli("offline-plots", main)
