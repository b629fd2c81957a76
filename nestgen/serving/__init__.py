"""Serving logic without Ray or HTTP: request schema and validation, the `auto` schedule chooser,
decode jobs and how they share a batch, the step loop, conditioning clips, streamed step events,
and response encoding, all held by the `Engine` a replica holds.

pipelines/serve/ is the Ray Serve application (FastAPI) around `Engine`; everything here is
unit-testable in one process.
"""
