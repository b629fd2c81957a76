"""One loader for every kind of tokenizer URL.

    a diffusers VQModel folder (config.json with `_class_name` "VQModel")  -> DiffusersVQTokenizer
    anything else: a nestgen tokenizer checkpoint or a training output
    folder (its LATEST)                                                    -> VQTokenizer
"""
from __future__ import annotations

from typing import Callable

import torch

from nestgen.checkpoint_files import checkpoint_file
from nestgen.tokenizers.checkpoint import load_vq_tokenizer
from nestgen.tokenizers.diffusers_vq import diffusers_class, load_diffusers_vq
from nestgen.tokenizers.interface import Tokenizer


def resolve_tokenizer_url(url: str, resolve_uri: Callable[[str], str] | None = None) -> str:
    """The URL that names exactly one tokenizer: a diffusers folder as it is, otherwise the
    checkpoint file a folder's LATEST names (pinned: a later run does not change what a
    manifest points at). `resolve_uri` first maps names storage does not know (the
    orchestration layer's runs:/ and models:/) to a URL, as in nestgen.checkpoint_files.checkpoint_file."""
    if resolve_uri is not None:
        url = resolve_uri(url)
    return url if diffusers_class(url) is not None else checkpoint_file(url)


def load_tokenizer(url: str, device: str | torch.device = "cpu", expected_hash: str | None = None) -> Tokenizer:
    """The tokenizer at `url` in eval mode on `device`. With `expected_hash` (what a shard
    manifest or generator checkpoint recorded), a tokenizer with another content hash is
    refused: its ids would mean other pixels."""
    if diffusers_class(url) is not None:
        return load_diffusers_vq(url, device, expected_hash)
    return load_vq_tokenizer(url, device, expected_hash)
