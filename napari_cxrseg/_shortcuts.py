"""Keyboard shortcuts of the review loop: one key per action, shown in tooltips and a help line.

The keys are bound on the viewer, so they work whatever layer is selected; none of them
is used by napari (its label-painting keys are 1-7, P, E, F, L, M, D, [, ], Z, A, B, ...
and Ctrl/Shift combinations of a few letters), which a test checks against napari's own
keymap.

=============  ==========  =================================================
action         key         what it does
=============  ==========  =================================================
approve        K           mark the current case approved (Review queue)
flag           J           mark the current case flagged (Review queue)
next_worst     N           next case of the worst-first queue
previous       Shift+N     previous case of the queue
heatmaps       H           show / hide the heatmaps
edit           Shift+E     edit the ticked regions (Correct)
save           Shift+S     save the correction (Correct)
=============  ==========  =================================================

PageDown / PageUp step through the Cases table (bound by the session).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["SHORTCUTS", "help_text", "with_key", "bind_dock", "bind"]

#: action -> (key, description).
SHORTCUTS: dict[str, tuple[str, str]] = {
    "approve": ("K", "approve"),
    "flag": ("J", "flag"),
    "next_worst": ("N", "next worst"),
    "previous": ("Shift-N", "previous"),
    "heatmaps": ("H", "heatmaps on/off"),
    "edit": ("Shift-E", "edit"),
    "save": ("Shift-S", "save correction"),
}


def key_label(action: str) -> str:
    """The key of an action as shown to the user (``"Shift+N"``)."""
    return SHORTCUTS[action][0].replace("-", "+")


def help_text() -> str:
    """One line listing every shortcut."""
    parts = [f"{key_label(a)} {desc}" for a, (_k, desc) in SHORTCUTS.items()]
    return "Keys: " + " · ".join(parts) + " · PgDn/PgUp next/previous case"


def with_key(tooltip: str, action: str) -> str:
    """``tooltip`` with the action's key appended, e.g. ``"approve the case (K)"``."""
    return f"{tooltip} ({key_label(action)})" if tooltip else key_label(action)


def bind(viewer, action: str, func: Callable[[], Any]) -> None:
    """Bind an action's key on ``viewer`` to ``func()`` (replacing an earlier binding)."""
    key = SHORTCUTS[action][0]

    def handler(_viewer):
        func()

    handler.__name__ = f"cxrseg_{action}"
    viewer.bind_key(key, handler, overwrite=True)


def _button_action(button, action: str, tip: str) -> Callable[[], Any]:
    button.setToolTip(with_key(button.toolTip() or tip, action))

    def press():
        if button.isEnabled():
            button.click()

    return press


def bind_dock(viewer, dock) -> list[str]:
    """Bind the shortcuts a dock offers; returns the actions bound.

    A dock offers an action by having its button: ``approve_btn``, ``flag_btn``,
    ``next_btn`` and ``prev_btn`` (Review queue); ``edit_button`` and ``save_button``
    (Correct); ``heat_box`` (Predict). The key clicks the button (nothing happens while
    it is disabled) and the button's tooltip names the key.
    """
    plan = {
        "approve": ("approve_btn", "approve the current case"),
        "flag": ("flag_btn", "flag the current case"),
        "next_worst": ("next_btn", "next case of the worst-first queue"),
        "previous": ("prev_btn", "previous case of the queue"),
        "edit": ("edit_button", "edit the ticked regions"),
        "save": ("save_button", "save the correction"),
        "heatmaps": ("heat_box", "show or hide the heatmaps"),
    }
    if type(dock).__name__ == "CasesWidget":  # its Next/Previous step the table, not the queue
        return []
    bound = []
    for action, (attr, tip) in plan.items():
        button = getattr(dock, attr, None)
        if button is None:
            continue
        bind(viewer, action, _button_action(button, action, tip))
        bound.append(action)
    return bound
