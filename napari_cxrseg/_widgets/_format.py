"""How the docks write numbers."""

from __future__ import annotations

__all__ = ["fmt_score"]


def fmt_score(v: float | None) -> str:
    """``0.9312`` -> ``"0.931"``; ``None``/NaN -> ``"–"``."""
    if v is None or v != v:
        return "–"
    return f"{v:.3f}"
