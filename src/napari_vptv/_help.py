"""Help for the plugin's widgets: wrapped tooltips and a link to the documentation.

* :func:`wrap_tip` -- a tooltip as rich text, which Qt shows word-wrapped (about
  40 characters wide) instead of one line across the screen;
  :func:`wrap_tooltips` does it for every control of a container.
* :func:`help_link` -- a "Help" link at the top of a widget. It opens the project's
  documentation URL when the package metadata names one (``Project-URL``), else, in
  a window of its own, the widget's page of the source checkout's ``docs/``
  (:data:`HELP_PAGES`), or the README (the installed package's copy) at the widget's
  section, so help works offline.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Optional

__all__ = ["wrap_tip", "wrap_tooltips", "docs_url", "docs_page", "readme_text", "help_link", "open_help", "HELP_PAGES"]

#: the docs page of each widget's help section
HELP_PAGES = {"In napari": "napari.md", "Correct mask widget": "correct.md", "Fine-tune on your images": "finetune.md"}
#: Project-URL labels that point at documentation, in order of preference.
_DOC_LABELS = ("documentation", "docs", "homepage", "source", "repository")


def wrap_tip(text: str) -> str:
    """``text`` as a tooltip that Qt wraps (rich text); already rich text stays as it is."""
    from qtpy.QtCore import Qt

    if not text or Qt.mightBeRichText(text):
        return text
    return f"<p style='white-space: normal'>{html.escape(text)}</p>"


def wrap_tooltips(container) -> None:
    """Wrap the tooltip of every control in a magicgui ``container`` (nested containers too)."""
    from magicgui.widgets import Container, FileEdit

    for w in container:
        if isinstance(w, Container) and not isinstance(w, FileEdit):
            wrap_tooltips(w)
        if w.tooltip:
            w.tooltip = wrap_tip(w.tooltip)


def _metadata():
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        return metadata("napari-vptv")
    except PackageNotFoundError:
        return None


def docs_url() -> Optional[str]:
    """The documentation URL of the package metadata (``Project-URL``), or None."""
    meta = _metadata()
    urls = {}
    for entry in (meta.get_all("Project-URL") or []) if meta is not None else []:
        label, _, url = entry.partition(",")
        urls[label.strip().lower()] = url.strip()
    return next((urls[k] for k in _DOC_LABELS if urls.get(k)), None)


def readme_text() -> str:
    """The README: the source checkout's (current), else the installed package's copy."""
    source = Path(__file__).resolve().parents[2] / "README.md"
    if source.is_file():
        return source.read_text(encoding="utf-8")
    meta = _metadata()
    return (meta.get_payload() or meta.get("Description") or "") if meta is not None else ""


def docs_page(section: str) -> Optional[str]:
    """The text of the widget's docs page in a source checkout, or None."""
    page = HELP_PAGES.get(section)
    path = Path(__file__).resolve().parents[2] / "docs" / page if page else None
    return path.read_text(encoding="utf-8") if path is not None and path.is_file() else None


def open_help(section: str = "", parent=None):
    """Open the documentation (see the module docstring); returns the README window, or
    None when the documentation URL was handed to the web browser."""
    from qtpy.QtCore import Qt, QUrl
    from qtpy.QtGui import QDesktopServices
    from qtpy.QtWidgets import QTextBrowser

    url = docs_url()
    if url:
        QDesktopServices.openUrl(QUrl(url))
        return None
    page = QTextBrowser(parent)
    page.setWindowFlag(Qt.WindowType.Window, True)
    page.setWindowTitle("napari-vptv: help" + (f" ({section})" if section else ""))
    page.setOpenExternalLinks(True)
    text = docs_page(section)
    page.setMarkdown(text if text is not None else readme_text())
    page.resize(760, 640)
    if section and text is None:
        page.find(section)  # scrolls to the widget's part of the README
    page.show()
    return page


def help_link(section: str, owner):
    """A "Help" link label; clicking it calls ``owner.open_help()``."""
    from magicgui.widgets import Label
    from qtpy.QtCore import Qt

    if docs_url():
        where, short = "the online documentation", "online"
    elif docs_page(section) is not None:
        where, short = f"docs/{HELP_PAGES[section]}", "docs"
    else:
        where, short = "the README", "README"
    link = Label(value=f"<a href='#help' style='color:#6cb4ff'>Help</a> ({short})")
    link.native.setTextFormat(Qt.TextFormat.RichText)
    link.native.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
    link.native.setWordWrap(True)
    link.native.linkActivated.connect(lambda *_: owner.open_help())
    link.tooltip = wrap_tip(f"Opens {where}" + (f" at '{section}'" if short == "README" else ""))
    return link
