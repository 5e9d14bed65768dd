"""The four stages, one Serve deployment each: Ingress -> Preprocessor -> Model -> Postprocessor.

Thin shells: Ray options and wiring; the work they do lives in the sibling packages.
"""
