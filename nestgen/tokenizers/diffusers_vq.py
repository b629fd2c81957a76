"""A Hugging Face diffusers `VQModel` folder as a nestgen Tokenizer (images only).

The folder is what `VQModel.save_pretrained` writes (config.json with `_class_name`
"VQModel", and diffusion_pytorch_model.safetensors or sharded safetensors with their index),
on a local path or any fsspec URL; `load_tokenizer` recognises it by that config.json. Its
files are copied to a temporary folder and loaded from there with `local_files_only`: nothing
ever contacts the Hugging Face Hub. Only safetensors weights are read (a .bin is a pickle).
Needs the optional extra: pip install 'nestgen[diffusers]'.

    encode: encoder + quant_conv (`model.encode(x).latents`) -> nearest codebook entry
            (`model.quantize`) -> ids (B, h, w)
    decode: ids -> codebook vectors (`quantize.get_codebook_entry`) ->
            `model.decode(..., force_not_quantize=True)`; models configured with
            `lookup_from_codebook` (aMUSEd's) take the ids and look them up themselves.

Pixels: diffusers VQModels take and give [-1, 1], nestgen's convention, so they pass as
they are. The image size the tokenize step resizes to is the config's `sample_size`; edit
config.json if that is not the resolution you want (the hash changes with it, as it should).
The grid is sample_size / 2^(len(block_out_channels) - 1): each encoder block but the last
halves the resolution.
Hash: sha256 over this adapter's format name and the names and bytes of config.json and
every weights file, 16 hex chars.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import torch

from nestgen.storage import join, read_bytes, url_to_fs

FORMAT = "diffusers-vqmodel/1"
CONFIG = "config.json"
CLASS_NAME = "VQModel"
HASH_CHARS = 16


def diffusers_class(url: str) -> str | None:
    """The `_class_name` of the diffusers model folder at `url`, None when it is not one."""
    fs, path = url_to_fs(url)
    if not fs.isdir(path) or not fs.exists(url_to_fs(join(url, CONFIG))[1]):
        return None
    try:
        cfg = json.loads(read_bytes(join(url, CONFIG)))
    except ValueError:
        return None
    return cfg.get("_class_name") if isinstance(cfg, dict) else None


def _weight_files(url: str) -> list[str]:
    fs, path = url_to_fs(url)
    names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    weights = [n for n in names if n.endswith((".safetensors", ".safetensors.index.json"))]
    if not any(n.endswith(".safetensors") for n in weights):
        raise ValueError(f"{url}: no safetensors weights (found {names}); .bin weights are pickles and are "
                         "not loaded: convert them with VQModel.from_pretrained(...).save_pretrained(...)")
    return weights


class DiffusersVQTokenizer:
    """Implements nestgen.tokenizers.interface.Tokenizer around a diffusers VQModel."""

    kind = "image"
    frames = 1
    temporal_downsample = 1
    causal = False

    def __init__(self, model, content_hash: str, config: dict):
        self.model = model.eval()
        self._hash = content_hash
        self.config = config
        c = model.config
        self.channels = int(c.in_channels)
        self.image_size = int(c.sample_size)
        self.downsample = 2 ** (len(c.block_out_channels) - 1)
        if self.image_size % self.downsample:
            raise ValueError(f"VQModel sample_size {self.image_size} is not a multiple of its downsampling "
                             f"{self.downsample}")
        self.grid = [self.image_size // self.downsample] * 2
        self.vocab_size = int(c.num_vq_embeddings)
        self.embed_dim = int(model.quantize.vq_embed_dim)

    @property
    def hash(self) -> str:
        return self._hash

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device) -> "DiffusersVQTokenizer":
        self.model.to(device)
        return self

    def describe(self) -> dict:
        return {"format": FORMAT, "config": self.config}

    def _check_pixels(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"VQModel tokenizer expects (B, {self.channels}, H, W) pixels, got {tuple(x.shape)}")
        if x.shape[-1] % self.downsample or x.shape[-2] % self.downsample:
            raise ValueError(f"pixel shape {tuple(x.shape)} is not divisible by downsample={self.downsample}")

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        self._check_pixels(pixels)
        out = []
        for c in pixels.split(batch_size) if batch_size else (pixels,):
            latents = self.model.encode(c.to(self.device, torch.float32)).latents
            _, _, (_, _, ids) = self.model.quantize(latents)
            out.append(ids.reshape(c.shape[0], *latents.shape[-2:]))
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, ids: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        if ids.ndim != 3:
            raise ValueError(f"image tokenizer decodes 2-d grids (B, h, w), got ids of shape {tuple(ids.shape)}")
        out = []
        for c in ids.split(batch_size) if batch_size else (ids,):
            flat = c.to(self.device).long().reshape(-1)
            shape = (c.shape[0], c.shape[1], c.shape[2], self.embed_dim)
            if self.model.config.lookup_from_codebook:
                dec = self.model.decode(flat, force_not_quantize=True, shape=shape)
            else:
                z_q = self.model.quantize.get_codebook_entry(flat, shape)
                dec = self.model.decode(z_q, force_not_quantize=True)
            out.append(dec.sample.clamp(-1, 1))
        return torch.cat(out)


def load_diffusers_vq(url: str, device: str | torch.device = "cpu", expected_hash: str | None = None
                      ) -> DiffusersVQTokenizer:
    """The VQModel folder at `url` as a Tokenizer on `device`; raises if `expected_hash` (what
    a shard manifest or generator checkpoint recorded) differs from its content hash."""
    try:
        from diffusers import VQModel
    except ImportError:
        raise ImportError(f"{url} is a diffusers VQModel folder: install the extra, "
                          "pip install 'nestgen[diffusers]'") from None
    h = hashlib.sha256(FORMAT.encode())
    with tempfile.TemporaryDirectory(prefix="nestgen-vqmodel-") as tmp:
        for name in [CONFIG, *_weight_files(url)]:
            data = read_bytes(join(url, name))
            h.update(f"{name}|{len(data)}|".encode())
            h.update(data)
            Path(tmp, name).write_bytes(data)
        got = h.hexdigest()[:HASH_CHARS]
        if expected_hash and got != expected_hash:
            raise ValueError(f"{url}: tokenizer hash {got}, but {expected_hash} was recorded for it "
                             "(the folder was replaced since)")
        config = json.loads(Path(tmp, CONFIG).read_bytes())
        if config.get("_class_name") != CLASS_NAME:
            raise ValueError(f"{url}: a diffusers {config.get('_class_name')!r}, not a {CLASS_NAME}: only "
                             "VQModels have the discrete codes nestgen generates")
        # low_cpu_mem_usage=False: the plain load (the other needs `accelerate`, and warns without it)
        model = VQModel.from_pretrained(tmp, local_files_only=True, use_safetensors=True, low_cpu_mem_usage=False)
    return DiffusersVQTokenizer(model, got, config).to(device)
