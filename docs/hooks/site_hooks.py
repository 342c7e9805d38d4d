"""MkDocs hooks of the documentation site (``mkdocs.yml`` names this file).

* The CLI reference page is generated from the program: the marker
  ``<!-- vptv-cli-help -->`` in ``reference/cli.md`` is replaced by the output of
  ``vptv --help`` and ``vptv COMMAND --help`` for every subcommand.
* The API reference shows the docstrings' Sphinx cross-reference roles
  (``:class:`X```, ``:func:`f```) as plain code: the role prefix is dropped.
* The figures of the paper experiments live in ``experiments/output/`` (written by
  ``experiments/run_all.py``); they are added to the site under ``figures/`` and the
  links of ``experiments.md`` point there.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ROOT / "experiments" / "output"
MARKER = "<!-- vptv-cli-help -->"
SPHINX_ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|obj|exc):(?=<code>)")


def _help(argv: list[str]) -> str:
    """What ``vptv ARGV`` prints (``--help`` exits; the exit is caught)."""
    from napari_vptv.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            main(argv)
        except SystemExit:
            pass
    text = out.getvalue().rstrip()
    if not text:
        raise RuntimeError(f"'vptv {' '.join(argv)}' printed nothing")
    return text


def cli_reference() -> str:
    """The CLI reference in Markdown: one section per subcommand, its help verbatim."""
    from napari_vptv.cli import SUBCOMMANDS

    os.environ["COLUMNS"] = "88"  # argparse wraps at the terminal width: fixed for the page
    parts = ["## vptv", "", "```text", _help(["--help"]), "```", ""]
    for name in SUBCOMMANDS:
        parts += [f"## vptv {name}", "", "```text", _help([name, "--help"]), "```", ""]
    return "\n".join(parts)


def on_files(files, config):
    """Add the experiment figures to the site, under figures/."""
    for png in sorted(FIGURES.glob("*.png")):
        files.append(File.generated(config, f"figures/{png.name}", abs_src_path=str(png)))
    return files


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri == "reference/cli.md":
        if MARKER not in markdown:
            raise RuntimeError(f"reference/cli.md lost its marker {MARKER}")
        return markdown.replace(MARKER, cli_reference())
    if page.file.src_uri == "experiments.md":
        return re.sub(r"\]\(\.\./experiments/output/", "](figures/", markdown)
    return markdown


def on_page_content(html, page, config, files):
    if page.file.src_uri.startswith("reference/"):
        return SPHINX_ROLE.sub("", html)
    return html
