"""Vendor vega, vega-lite and vega-embed (pinned npm releases) into the offline HTML template
of DVC's plots page, ``lipbench/report/vega_assets/dvc_plots_template.html``.

    .venv/bin/python tools/vendor_vega.py          # rewrite the assets from npm
    .venv/bin/python tools/vendor_vega.py --check  # rebuild in a temporary folder, compare

``dvc plots show`` loads these three libraries from a CDN, so its page is blank without
internet. The template inlines them (plus ``{plot_divs}``, the placeholder DVC fills), so
``dvc plots show --html-template <template>`` and the report's ``plots.html`` draw offline.
Run by hand (needs ``npm`` and the npm registry) only to change the pins below; the result
is committed, so neither CI nor the pipeline needs npm. Each tarball is checked against its
pinned sha512 integrity; the scripts are inlined byte for byte (their sha256 go into
``manifest.json``, which a test checks against the template).

The versions are the newest of the major lines DVC's renderer targets (its specs use the
Vega-Lite v5 schema; dvc-render's own page loads vega@5, vega-lite@5, vega-embed@6).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "lipbench" / "report" / "vega_assets"
TEMPLATE_NAME = "dvc_plots_template.html"

#: (npm package, exact version, file inlined from the tarball, sha512 integrity of the tarball)
PINS = (
    (
        "vega",
        "5.33.1",
        "build/vega.min.js",
        "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw==",
    ),
    (
        "vega-lite",
        "5.23.0",
        "build/vega-lite.min.js",
        "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA==",
    ),
    (
        "vega-embed",
        "6.29.0",
        "build/vega-embed.min.js",
        "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q==",
    ),
)

#: The vega tarball ships no LICENSE: the text comes from a package of the same monorepo
#: (vega/vega) that ships it, vega-scenegraph 4.13.1 (4.13.2, the one vega 5.33.1 depends on,
#: ships none either), pinned the same way.
LICENSE_FROM = {
    "vega": (
        "vega-scenegraph",
        "4.13.1",
        "sha512-LFY9+sLIxRfdDI9ZTKjLoijMkIAzPLBWHpPkwv4NPYgdyx+0qFmv+puBpAUGUY9VZqAZ736Uj5NJY9zw+/M3yQ==",
    )
}

#: Runs after vega-embed: SVG by default (crisp and inspectable), no action that needs the
#: network (the online editor), a failed plot shows its error in place, and the <html>
#: element counts drawn and failed plots (data-vega-rendered / data-vega-failed).
WRAPPER = """(function () {
  var embed = window.vegaEmbed, root = document.documentElement;
  function bump(name) { root.dataset[name] = String(Number(root.dataset[name] || 0) + 1); }
  window.vegaEmbed = function (el, spec, opt) {
    var defaults = {renderer: "svg", actions: {export: true, source: true, compiled: true, editor: false}};
    return embed(el, spec, Object.assign(defaults, opt || {})).then(
      function (result) { bump("vegaRendered"); return result; },
      function (error) {
        bump("vegaFailed");
        var target = typeof el === "string" ? document.querySelector(el) : el;
        if (target) { target.textContent = "plot failed: " + error; }
      });
  };
})();"""

STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}"
    "body>div{display:inline-block;vertical-align:top;margin:0 1em 1em 0}"
    "h1,h2,p{display:block}h2{border-bottom:2px solid #ddd;padding-bottom:0.2em}"
)


def integrity(data: bytes) -> str:
    """npm's ``sha512-<base64>`` integrity string of ``data``."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def fetch(name: str, version: str, expected: str, folder: Path) -> Path:
    """``npm pack`` one pinned release into ``folder``; refuse a tarball whose integrity differs."""
    command = ["npm", "pack", f"{name}@{version}", "--json", "--pack-destination", str(folder)]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    tarball = folder / json.loads(result.stdout)[0]["filename"]
    actual = integrity(tarball.read_bytes())
    if actual != expected:
        raise SystemExit(f"vendor_vega: {name}@{version}: tarball integrity {actual} is not the pinned {expected}")
    return tarball


def _member(tarball: Path, path: str) -> bytes:
    with tarfile.open(tarball, "r:gz") as archive:
        handle = archive.extractfile(f"package/{path}")
        if handle is None:
            raise SystemExit(f"vendor_vega: {tarball.name} has no file package/{path}")
        return handle.read()


def _license(name: str, version: str, tarball: Path, folder: Path) -> str:
    """The LICENSE text of a pinned package, headed by where it comes from."""
    source = f"{name}@{version}"
    if name in LICENSE_FROM:
        other, other_version, pin = LICENSE_FROM[name]
        tarball = fetch(other, other_version, pin, folder)
        source += f" (its monorepo's LICENSE, as shipped in {other}@{other_version})"
    return f"==> {source} <==\n\n{_member(tarball, 'LICENSE').decode('utf-8').strip()}\n"


def template(scripts: list[tuple[str, str, str]]) -> str:
    """The page template: each (package@version, integrity, script text) inlined, then the wrapper."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        "{refresh_tag}",
        "<title>lipbench plots</title>",
    ]
    for label, pin, text in scripts:
        if "</script" in text.lower():
            raise SystemExit(f"vendor_vega: {label} contains '</script', it cannot be inlined")
        parts += [f"<!-- vendored: {label} (BSD-3-Clause, see LICENSES.txt; npm tarball {pin}) -->", f"<script>{text}</script>"]
    parts += [
        "<!-- lipbench: vegaEmbed defaults and plot counters -->",
        f"<script>{WRAPPER}</script>",
        f"<style>{STYLE}</style>",
        "</head>",
        "<body>",
        "{plot_divs}",
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"


def build(out: Path) -> None:
    """Fetch every pin and write the template, ``LICENSES.txt`` and ``manifest.json`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    scripts, licenses, packages = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for name, version, path, pin in PINS:
            tarball = fetch(name, version, pin, Path(folder))
            data = _member(tarball, path)
            scripts.append((f"{name}@{version}", pin, data.decode("utf-8")))
            licenses.append(_license(name, version, tarball, Path(folder)))
            packages.append(
                {
                    "name": name,
                    "version": version,
                    "file": path,
                    "tarball_integrity": pin,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "bytes": len(data),
                    "license": "BSD-3-Clause",
                }
            )
    (out / TEMPLATE_NAME).write_text(template(scripts), encoding="utf-8")
    (out / "LICENSES.txt").write_text("\n\n".join(licenses), encoding="utf-8")
    manifest = {"template": TEMPLATE_NAME, "written_by": "tools/vendor_vega.py", "packages": packages}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="rebuild in a temporary folder and compare with the committed assets"
    )
    args = parser.parse_args(argv)
    if not args.check:
        build(ASSETS)
        print(f"vendor_vega: wrote {ASSETS}")
        return 0
    with tempfile.TemporaryDirectory() as folder:
        build(Path(folder))
        names = (TEMPLATE_NAME, "LICENSES.txt", "manifest.json")
        differing = [n for n in names if (Path(folder) / n).read_bytes() != (ASSETS / n).read_bytes()]
    print("vendor_vega: " + (f"differs: {', '.join(differing)}" if differing else "the committed assets match the pins"))
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
