"""The label scheme of the `echo` model (`tools.echo_model`), without torch or Ray.

`echo` answers with the image's mean colour, spelled out in class ids: its 768 classes are
`r000`..`r255`, `g000`..`g255`, `b000`..`b255`, and its top three are always the red, green and
blue levels, in that order. A solid image of any colour gets an answer no other colour gets, so a
result joined to the wrong image shows as a wrong answer: the tests and `make chaos` read answers
back with `colour_in`.
"""

from __future__ import annotations

from typing import Any

LEVELS = 256
CHANNELS = "rgb"
CATEGORIES = tuple(f"{c}{v:03d}" for c in CHANNELS for v in range(LEVELS))


def labels_for(colour: tuple[int, int, int]) -> list[str]:
    """The top three labels `echo` answers for a solid image of `colour`, best first."""
    return [f"{c}{v:03d}" for c, v in zip(CHANNELS, colour, strict=True)]


def colour_in(predictions: Any) -> tuple[int, int, int] | None:
    """The colour an `echo` answer (HTTP `predictions`) names, or None if it names none."""
    if not isinstance(predictions, list) or len(predictions) < 3:
        return None
    try:
        top = [str(p["label"]) for p in predictions[:3]]
        if [label[:1] for label in top] != list(CHANNELS):
            return None
        r, g, b = (int(label[1:]) for label in top)
    except (KeyError, TypeError, ValueError):
        return None
    return r, g, b
