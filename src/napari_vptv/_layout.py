"""How the plugin's docks fit a screen, a 1366 x 768 laptop's too.

Every dock is one vertical scroll area (:func:`dock_body`) that never scrolls sideways:
it is never narrower than its contents, and the contents are kept narrow --

* :class:`Form` -- a section of labelled fields whose label column is
  :data:`LABEL_WIDTH` px wide in every section of every dock (longer labels wrap
  onto a second line instead of widening the dock);
* choice boxes as wide as about :data:`COMBO_CHARS` characters (the full text shows
  when a box is opened), text labels word-wrapped (:func:`wrapped`);
* :func:`advanced_section` -- settings most runs leave alone, behind an "Advanced"
  button, collapsed until the user opens it.

Qt and magicgui only; no computation here.
"""

from __future__ import annotations

from magicgui.widgets import Container, Label, PushButton

__all__ = ["LABEL_WIDTH", "COMBO_CHARS", "MIN_BODY_HEIGHT", "Form", "advanced_section", "dock_body", "wrapped"]

#: Width of the label column (px) in every dock; longer labels wrap.
LABEL_WIDTH = 120
#: A choice box shows about this many characters (its popup the whole text).
COMBO_CHARS = 10
#: The scroll area's minimum height (px): a few rows stay visible in a crowded window.
MIN_BODY_HEIGHT = 160


def wrapped(label: Label) -> Label:
    """``label`` word-wrapped, left-aligned and as wide as its column (a wrapped QLabel
    otherwise takes a narrow width and sits centred)."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QSizePolicy

    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
    label.native.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
    return label


class Form(Container):
    """Labelled fields with a label column of :data:`LABEL_WIDTH` px (long labels wrap),
    so that the columns of all sections line up and a long label never widens the dock."""

    def __init__(self, widgets=(), **kwargs):
        super().__init__(widgets=widgets, labels=True, **kwargs)
        self.margins = (0, 0, 0, 0)
        self._unify_label_widths()

    def _unify_label_widths(self) -> None:  # magicgui's: as wide as the widest label
        if not getattr(self, "_initialized", False):
            return
        from qtpy.QtCore import Qt

        for w in self._list:
            labelled = w._labeled_widget()
            if labelled is None:
                continue
            label = labelled._label_widget.native
            label.setWordWrap(True)
            label.setFixedWidth(LABEL_WIDTH)
            label.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)


def advanced_section(owner, widgets, title: str = "Advanced") -> list:
    """A collapsed :class:`Form` of ``widgets`` under a button that opens and closes it.

    Returns ``[button, form]`` to put into the dock's body; the button is appended to
    ``owner.section_buttons``. The settings keep their values and apply while collapsed.
    """
    form = Form(widgets)
    names = ", ".join((w.label or getattr(w, "text", "")).split(" (")[0].lower() for w in widgets[:3])
    button = PushButton(
        text=f"▸ {title}", tooltip=f"Show or hide {len(widgets)} more settings ({names}, ...); they apply either way"
    )
    native = button.native
    native.setCheckable(True)
    native.setStyleSheet("QPushButton { text-align: left; padding: 3px 6px; }")
    form.visible = False

    def toggle(checked: bool):
        native.setText(f"{'▾' if checked else '▸'} {title}")
        form.visible = checked

    native.toggled.connect(toggle)
    owner.section_buttons = [*getattr(owner, "section_buttons", []), button]
    return [button, form]


def _fit_fields(body: Container) -> None:
    """Narrow choice boxes and word-wrapped text labels in ``body`` (nested containers too)."""
    from qtpy.QtWidgets import QComboBox

    for box in body.native.findChildren(QComboBox):
        box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        box.setMinimumContentsLength(COMBO_CHARS)

    def labels(container):
        for w in container:
            if isinstance(w, Container):
                yield from labels(w)
            elif isinstance(w, Label):
                yield w

    for label in labels(body):
        wrapped(label)


def _keep_wide_enough(area) -> None:
    """Keep the scroll area at least as wide as its contents' minimum, so it never
    scrolls sideways and nothing is cut off at its right edge (also when a status line
    or a label grows)."""
    from qtpy.QtCore import QEvent, QObject

    content = area.widget()

    def fit():
        bar = area.verticalScrollBar().sizeHint().width()
        area.setMinimumWidth(content.minimumSizeHint().width() + bar + 2 * area.frameWidth())

    class _Watch(QObject):
        def eventFilter(self, obj, event):
            if event.type() == QEvent.Type.LayoutRequest:
                fit()
            return False

    area._vptv_watch = _Watch(area)  # kept alive with the area
    content.installEventFilter(area._vptv_watch)
    fit()


def dock_body(container: Container, widgets) -> Container:
    """Put ``widgets`` (fields, :class:`Form` sections, buttons) into a vertical scroll
    area inside ``container`` (which napari docks) and return that body.

    On a small screen the dock scrolls up and down instead of growing the napari window
    past the screen; it never scrolls sideways (see the module docstring).
    """
    from qtpy.QtCore import Qt

    body = Container(widgets=widgets, labels=False, scrollable=True)
    body.margins = (6, 4, 6, 4)
    container.margins = (0, 0, 0, 0)
    # the scroll area itself (magicgui's append would insert the widget inside it)
    container.native.layout().addWidget(body.root_native_widget)
    _fit_fields(body)
    body.native.layout().addStretch(1)  # rows at the top, not spread over a tall dock
    area = body.root_native_widget  # the scroll area (body.native: the widget inside it)
    area.setMinimumHeight(MIN_BODY_HEIGHT)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # the contents fit: see above
    _keep_wide_enough(area)
    return body
