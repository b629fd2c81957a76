"""Flags shared by several `nestgen` subcommands, each defined once: the config file with
--set overrides, the Ray address, and the decode flags."""
from __future__ import annotations

import argparse
import os
import shutil
import sys

from nestgen.configschema import from_dict, to_dict
from nestgen.decoding.config import DecodeConfig
from nestgen.decoding.schedule import resolve_schedule

# flag, DecodeConfig field (also the service's request field), type, help
DECODE_FLAGS = (
    ("--schedule", "schedule", str, "preset name or e.g. 8x3,4x3,2x3,1x3 (default: config's)"),
    ("--steps", "steps", int, "decoding steps K (default: config's)"),
    ("--cache", "cache", str, "none | on_switch | every:R, optionally +cls (default: config's)"),
    ("--guidance", "guidance_scale", float, "classifier-free guidance scale"),
    ("--temperature", "temperature", float, None),
)


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file")
    add_set_arg(p, "override a config field, e.g. --set train.steps=200 (repeatable)")


def add_set_arg(p: argparse.ArgumentParser, help: str | None = None) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def add_ray_address(p: argparse.ArgumentParser, default_help: str = "a local Ray") -> None:
    p.add_argument("--ray-address", default=None, help=f"Ray cluster address (default: {default_help})")


def add_decode_args(p: argparse.ArgumentParser) -> None:
    for flag, field, tp, help in DECODE_FLAGS:
        p.add_argument(flag, dest=field, type=tp, metavar=flag[2:].upper(), help=help)


def decode_overrides(args: argparse.Namespace) -> dict:
    """The decode fields given on the command line, by DecodeConfig field name."""
    return {field: getattr(args, field) for _, field, _, _ in DECODE_FLAGS if getattr(args, field) is not None}


def decode_config(base: DecodeConfig, args: argparse.Namespace) -> DecodeConfig:
    """`base` with the decode flags applied; a --schedule without --steps brings its own K."""
    given = decode_overrides(args)
    if "schedule" in given and "steps" not in given:
        given["steps"] = resolve_schedule(given["schedule"]).steps
    return from_dict(DecodeConfig, to_dict(base) | given, "decode")


def runnable(command: str) -> str:
    """`command` (nestgen, mlflow, ray: installed next to this Python) as it can be typed in
    a new shell: the bare name when that environment is on PATH (activated), else its path,
    relative to the working directory when under it (.venv/bin/nestgen)."""
    exe = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), command)
    found = shutil.which(command)
    if not os.path.exists(exe) or (found and os.path.samefile(found, exe)):
        return command
    rel = os.path.relpath(exe)
    return exe if rel.startswith("..") else rel
