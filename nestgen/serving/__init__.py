"""Serving logic without Ray: request schema and validation, the `auto` schedule chooser,
grouping a batch by decode settings, and response encoding.

pipelines/serve.py is the thin Ray Serve deployment around `Engine`; everything here is
unit-testable in one process.
"""
