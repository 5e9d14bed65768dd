"""Synthetic-shapes domain: generator, detector, metrics, training and offline evaluation."""

CATEGORIES: tuple[str, ...] = ("circle", "square", "triangle")
