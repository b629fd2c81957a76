"""The standard TorchScript feature networks for FID/IS and FVD, loaded from local files only.

Nothing is ever downloaded. A network file is found, in order, at: the path given by the
caller (config), the environment variable, then the cache directory
($NESTGEN_CACHE_DIR or ~/.cache/nestgen). If none exists, `FeatureNetUnavailable` says
which file is needed, every place that was looked at, and how to supply it.

A TorchScript file is code: loading it runs what it holds. So a file is loaded only when
its sha256 is the one expected, given by the caller, ${env_var}_SHA256 or the published
file's hash recorded below; `FeatureNetUntrusted` otherwise. The bytes are read once,
hashed, and those same bytes are loaded (never the path again, which could have changed in
between); workers are given the hash the driver checked and verify what they load.

Input conventions (checked against the reference code; the protocol record repeats them):

* Inception-v3 `inception-2015-12-05.pt` (StyleGAN2-ADA, a direct TorchScript translation of
  the TF graph used by the original FID code): forward(img, return_features=False,
  use_fp16=False, no_output_bias=False). img is uint8-valued NCHW RGB in [0, 255], any size;
  it resizes to 299x299 internally (bilinear grid_sample, align_corners=False) and maps to
  [-1, 1] by (x - 128) / 128. return_features=True gives the 2048-d pool3 features (FID);
  otherwise softmax probabilities over 1008 classes, and IS uses no_output_bias=True (as the
  original improved-GAN IS code did).
* I3D `i3d_torchscript.pt` (StyleGAN-V, the TF-hub Kinetics-400 I3D of the original FVD):
  forward(x, rescale, resize, return_features). x is (B, C, T, H, W), 16 frames.
  return_features=True gives the 400-d pre-softmax outputs. Two conventions are in use:
  StyleGAN-V's own code passes uint8 [0, 255] with rescale=True, resize=True (the network
  scales to [-1, 1] and resizes to 224 itself); the widely used common_metrics_on_video_quality
  port passes float [-1, 1] already at 224x224 with rescale=False, resize=False. nestgen's
  default is the latter (preprocessing done here, so it is visible and recorded).
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import torch

from nestgen.metrics.protocol import bytes_sha256, short

__all__ = [
    "FeatureNetSpec", "FeatureNetUnavailable", "FeatureNetUntrusted", "LoadedFeatureNet", "INCEPTION", "I3D",
    "cache_dir", "candidate_paths", "resolve_feature_net", "load_feature_net",
]


class FeatureNetUnavailable(FileNotFoundError):
    """A required feature-network file is not on this machine (nothing is downloaded)."""


class FeatureNetUntrusted(ValueError):
    """A feature-network file with no expected hash, or with other bytes than expected."""


@dataclass(frozen=True)
class FeatureNetSpec:
    name: str                 # inception_v3_tf / i3d_kinetics400
    filename: str             # the canonical file name
    env_var: str
    feature_dim: int
    source: str               # where the file comes from (for the error message)
    # sha256 of the file as its source publishes it. "": none from an authoritative source was
    # found to record here (StyleGAN2-ADA and StyleGAN-V download these files without one),
    # so the user gives the hash of the copy they trust.
    published_sha256: str = ""
    conventions: dict[str, Any] = field(default_factory=dict)

    @property
    def sha256_env_var(self) -> str:
        return self.env_var.removesuffix("_PATH") + "_SHA256"


INCEPTION = FeatureNetSpec(
    name="inception_v3_tf_2015_12_05",
    filename="inception-2015-12-05.pt",
    env_var="NESTGEN_INCEPTION_PATH",
    feature_dim=2048,
    source="StyleGAN2-ADA (NVlabs/stylegan2-ada-pytorch, metrics/frechet_inception_distance.py: "
           "the detector_url inception-2015-12-05.pt)",
    conventions={
        "input": "uint8 NCHW RGB 0..255, any size; grayscale repeated to 3 channels",
        "resize": "inside the network: bilinear grid_sample (align_corners=False) to 299x299",
        "normalize": "inside the network: (x - 128) / 128",
        "fid_call": "net(x, return_features=True) -> (N, 2048) pool3",
        "is_call": "net(x, return_features=False, no_output_bias=True) -> (N, 1008) softmax",
    },
)

I3D = FeatureNetSpec(
    name="i3d_kinetics400_torchscript",
    filename="i3d_torchscript.pt",
    env_var="NESTGEN_I3D_PATH",
    feature_dim=400,
    source="StyleGAN-V (universome/stylegan-v, src/metrics/frechet_video_distance.py: "
           "the detector_url i3d_torchscript.pt)",
    conventions={
        "call": "net(x, rescale=..., resize=..., return_features=True) -> (N, 400) pre-softmax",
        "input_layout": "(B, C, T, H, W), C=3, T=16",
    },
)


def cache_dir() -> Path:
    return Path(os.environ.get("NESTGEN_CACHE_DIR") or Path.home() / ".cache" / "nestgen")


def candidate_paths(spec: FeatureNetSpec, path: str | os.PathLike | None = None
                    ) -> list[tuple[str, str]]:
    """(where, path) in lookup order. An explicit path or a set env var is the only candidate
    of its kind: if the user named a file, a different file must not be picked up silently."""
    if path:
        return [("configured path", str(path))]
    env = os.environ.get(spec.env_var)
    if env:
        return [(f"${spec.env_var}", env)]
    return [("cache dir", str(cache_dir() / spec.filename))]


def _exists(p: str) -> bool:
    if "://" in p:
        fs, fp = fsspec.core.url_to_fs(p)
        return fs.isfile(fp)
    return os.path.isfile(p)


def resolve_feature_net(spec: FeatureNetSpec, path: str | os.PathLike | None = None) -> str:
    """The file to load, or FeatureNetUnavailable naming the file, places and remedies."""
    tried = candidate_paths(spec, path)
    for _, p in tried:
        if _exists(p):
            return p
    looked = "; ".join(f"{where}: {p}" for where, p in tried)
    raise FeatureNetUnavailable(
        f"feature network {spec.filename!r} ({spec.name}) not found. Looked at {looked}. "
        f"nestgen never downloads it. Supply it by copying {spec.filename} from {spec.source} "
        f"to {cache_dir() / spec.filename}, or set ${spec.env_var}=/path/to/{spec.filename}, "
        "or pass its path in the evaluation config.")


@dataclass
class LoadedFeatureNet:
    spec: FeatureNetSpec
    module: torch.jit.ScriptModule
    path: str
    sha256: str
    device: torch.device

    def record(self) -> dict[str, Any]:
        """The feature-network part of a protocol record."""
        return {"name": self.spec.name, "file": os.path.basename(self.path), "path": self.path,
                "sha256": short(self.sha256), "sha256_full": self.sha256,
                "conventions": dict(self.spec.conventions)}

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)


# (spec, path, expected sha256, device) -> the network loaded from bytes with that hash
_LOADED: dict[tuple[str, str, str, str], LoadedFeatureNet] = {}


def _jit_load(f, dev: torch.device):
    # torch >= 2.10 warns that TorchScript is deprecated; these files exist only as
    # TorchScript, so the warning is noise for every evaluation.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*torch.jit.*")
        return torch.jit.load(f, map_location=dev).eval()


def _expected_sha256(spec: FeatureNetSpec, sha256: str | None, path: str) -> str:
    """The hash the file at `path` must have: `sha256`, else ${spec.sha256_env_var}, else the
    published file's; FeatureNetUntrusted when there is none."""
    expected = (sha256 or os.environ.get(spec.sha256_env_var) or spec.published_sha256).strip().lower()
    if not expected:
        raise FeatureNetUntrusted(
            f"refusing to load feature network {path} ({spec.name}) without its sha256: a TorchScript "
            f"file runs code when loaded. Set ${spec.sha256_env_var} to the sha256 of the copy you trust "
            f"(sha256sum {spec.filename}; the file comes from {spec.source})")
    return expected


def load_feature_net(spec: FeatureNetSpec, path: str | os.PathLike | None = None,
                     device: str | torch.device = "auto", sha256: str | None = None) -> LoadedFeatureNet:
    """torch.jit.load the network whose bytes hash to the expected sha256 (`sha256`, else
    ${spec.sha256_env_var}, else the published file's), eval mode, on device; cached per
    file, hash and device."""
    from nestgen.device import resolve_device

    dev = resolve_device(device) if isinstance(device, str) else device
    p = resolve_feature_net(spec, path)
    expected = _expected_sha256(spec, sha256, p)
    key = (spec.name, p if "://" in p else os.path.abspath(p), expected, str(dev))
    if key not in _LOADED:
        with fsspec.open(p, "rb") as f:
            data = f.read()
        digest = bytes_sha256(data)
        if digest != expected:
            raise FeatureNetUntrusted(
                f"refusing to load feature network {p}: its sha256 is {digest}, expected {expected}; replace the "
                f"file with the trusted copy, or if this file is the one you trust set ${spec.sha256_env_var}={digest}")
        _LOADED[key] = LoadedFeatureNet(spec, _jit_load(io.BytesIO(data), dev), p, digest, dev)
    return _LOADED[key]


def on_worker(net: LoadedFeatureNet):
    """(device) -> the same network file loaded there, only with the bytes the driver checked.
    TorchScript does not pickle: a metric's worker-side features load the file by path (once
    per process, `_LOADED`)."""
    spec, path, sha256 = net.spec, net.path, net.sha256
    return lambda device: load_feature_net(spec, path, device, sha256)
