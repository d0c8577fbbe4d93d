"""The JavaScript the static book needs, served from local files (no CDN).

Widgets in the rendered HTML need the ipywidgets HTML manager and RequireJS;
equations need MathJax. By default Jupyter Book loads all three from public
CDNs, so offline every widget disappears and equations stay raw. Here the
pinned npm packages are fetched once with ``npm pack`` into a cache folder and
copied into the book's static files at build time.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

__all__ = ["NPM_PACKAGES", "VendorError", "ensure_vendor_assets", "install_static_assets"]

#: Pinned npm packages: the widget manager matching ipywidgets 8, RequireJS and MathJax 3.
NPM_PACKAGES = {  # bump VENDOR_LAYOUT below when the assembled layout changes
    "html-manager": "@jupyter-widgets/html-manager@1.0.15",
    "requirejs": "requirejs@2.3.7",
    "mathjax": "mathjax@3.2.2",
}

#: Version of the assembled folder layout (part of the cache stamp).
VENDOR_LAYOUT = 2

#: Relative to the static folder: what the book's ``_config.yml`` points at.
WIDGET_SHIM = """\
// Before the widget manager loads: keep the theme's Font Awesome from replacing
// the <i class="fa"> icons that the Play widget (and with it jslink) relies on,
// and let RequireJS resolve the widget bundle's fonts next to this file.
window.FontAwesomeConfig = { autoReplaceSvg: "nest" };
(function () {
  var src = document.currentScript && document.currentScript.src;
  if (src && window.require && window.require.config) {
    window.require.config({ baseUrl: src.substring(0, src.lastIndexOf("/") + 1) });
  }
})();
"""

_FONT_SUFFIXES = (".woff", ".woff2", ".ttf", ".eot", ".svg")


class VendorError(RuntimeError):
    """npm is missing or a package could not be fetched."""


def _npm_pack(spec: str, dest: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise VendorError(
            "npm is needed once to fetch the book's JavaScript (widget manager, RequireJS, MathJax); "
            "install Node.js and npm (e.g. apt-get install nodejs npm) and rerun"
        )
    proc = subprocess.run([npm, "pack", spec, "--silent"], cwd=dest, capture_output=True, text=True)
    if proc.returncode != 0:
        raise VendorError(f"npm pack {spec} failed: {proc.stderr.strip()[-800:]}")
    return dest / proc.stdout.strip().splitlines()[-1]


def ensure_vendor_assets(cache_dir: str | Path = ".vendor") -> Path:
    """Fetch and unpack the pinned packages once; return the assembled ``vendor/`` folder.

    The folder holds ``require.js``, ``widget-shim.js``, ``embed-amd.js`` with its
    fonts, and ``mathjax/`` (MathJax's es5 build). A second call is free.
    """
    cache = Path(cache_dir).resolve()
    vendor = cache / "vendor"
    marker = vendor / ".complete"
    stamp = repr([VENDOR_LAYOUT, *sorted(NPM_PACKAGES.values())])
    if marker.exists() and marker.read_text() == stamp:
        return vendor
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        tmp_path = Path(tmp)
        unpacked = {}
        for key, spec in NPM_PACKAGES.items():
            tarball = _npm_pack(spec, tmp_path)
            target = tmp_path / key
            with tarfile.open(tarball) as tar:
                tar.extractall(target, filter="data")
            unpacked[key] = target / "package"
        staging = tmp_path / "vendor"
        staging.mkdir()
        shutil.copy2(unpacked["requirejs"] / "require.js", staging / "require.js")
        dist = unpacked["html-manager"] / "dist"
        shutil.copy2(dist / "embed-amd.js", staging / "embed-amd.js")
        # The bundle looks for its fonts both next to RequireJS's base URL and under
        # its CDN layout (<cdn>/@jupyter-widgets/html-manager/dist/): serve both.
        cdn_fonts = staging / "@jupyter-widgets" / "html-manager" / "dist"
        cdn_fonts.mkdir(parents=True)
        for font in dist.iterdir():
            if font.suffix in _FONT_SUFFIXES:
                shutil.copy2(font, staging / font.name)
                shutil.copy2(font, cdn_fonts / font.name)
        shutil.copytree(unpacked["mathjax"] / "es5", staging / "mathjax")
        (staging / "widget-shim.js").write_text(WIDGET_SHIM)
        (staging / ".complete").write_text(stamp)
        if vendor.exists():
            shutil.rmtree(vendor)
        staging.rename(vendor)
    return vendor


def install_static_assets(static_dir: str | Path, cache_dir: str | Path = ".vendor") -> Path:
    """Copy the vendored JavaScript into ``static_dir/vendor`` (a Sphinx ``html_static_path``)."""
    source = ensure_vendor_assets(cache_dir)
    target = Path(static_dir) / "vendor"
    # A copy of the same vendored release is left alone: an unchanged rebuild rewrites nothing.
    stamp, copied = (source / ".complete").read_text(), Path(static_dir) / "vendor.stamp"
    if target.is_dir() and copied.is_file() and copied.read_text() == stamp:
        return target
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".complete"))
    copied.write_text(stamp)
    return target
