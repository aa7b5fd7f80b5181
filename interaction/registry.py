"""The modes `-mode` offers, by name: a plain dict of the mode objects (add a line for a new mode)."""

from __future__ import annotations

from interaction import aespa, baselines, spa
from interaction.mode import Mode

MODES: dict[str, Mode] = {
    "AESPA": aespa.MODE,
    "SPA": spa.MODE,
    "consensus": baselines.CONSENSUS,
    "click_editor": baselines.CLICK_EDITOR,
}
