"""Vector quantizer shared by the 2D and 3D tokenizers.

Encoder outputs (B, D, *grid) are matched to the nearest of K codes. With `l2_normalize`
both sides live on the unit sphere (ViT-VQGAN): nearest = highest cosine similarity, which
keeps code norms from drifting apart and leaving most codes unused. Codes are learned by
the codebook loss ||sg(z) - e||^2; the encoder by the commitment loss beta*||z - sg(e)||^2;
gradients pass the non-differentiable lookup with the straight-through estimator.

The module holds only inference state (the codebook): usage statistics and dead-code
restarts are training concerns and live in the trainer (nestgen.tokenizers.training).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor   # (B, D, *grid), straight-through: gradients flow to the encoder
    ids: torch.Tensor         # (B, *grid) long
    loss: torch.Tensor        # codebook + beta * commitment, scalar
    flat_inputs: torch.Tensor  # (N, D) the (normalized) encoder outputs, detached: restart seeds


class VectorQuantizer(nn.Module):
    def __init__(self, codebook_size: int, code_dim: int, beta: float = 0.25, l2_normalize: bool = True):
        super().__init__()
        self.codebook_size, self.code_dim = codebook_size, code_dim
        self.beta, self.l2_normalize = beta, l2_normalize
        # Unit-variance init; on the sphere this is a uniform spread of directions.
        self.codebook = nn.Parameter(torch.randn(codebook_size, code_dim))

    def codes(self) -> torch.Tensor:
        """(K, D) codebook as used for lookup and decoding."""
        return F.normalize(self.codebook, dim=-1) if self.l2_normalize else self.codebook

    def _prep(self, z_flat: torch.Tensor) -> torch.Tensor:
        return F.normalize(z_flat, dim=-1) if self.l2_normalize else z_flat

    def nearest(self, z_flat: torch.Tensor) -> torch.Tensor:
        """(N, D) prepared inputs -> (N,) ids of the nearest codes."""
        e = self.codes()
        if self.l2_normalize:
            return (z_flat @ e.t()).argmax(dim=-1)      # unit vectors: max cosine = min distance
        dist = z_flat.pow(2).sum(-1, keepdim=True) - 2 * z_flat @ e.t() + e.pow(2).sum(-1)
        return dist.argmin(dim=-1)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        grid = z.shape[2:]
        z_flat = self._prep(rearrange(z, "b d ... -> (b ...) d"))
        ids = self.nearest(z_flat.detach())
        e = self.codes()[ids]
        loss = F.mse_loss(e, z_flat.detach()) + self.beta * F.mse_loss(z_flat, e.detach())
        q = z_flat + (e - z_flat).detach()               # straight-through estimator
        q = q.reshape(z.shape[0], *grid, self.code_dim).movedim(-1, 1)
        return QuantizerOutput(q, ids.reshape(z.shape[0], *grid), loss, z_flat.detach())

    def quantize_ids(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, *grid) -> (B, *grid) ids, without losses (encode path)."""
        z_flat = self._prep(rearrange(z, "b d ... -> (b ...) d"))
        return self.nearest(z_flat).reshape(z.shape[0], *z.shape[2:])

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, *grid) ids -> (B, D, *grid) code vectors (decode path)."""
        return self.codes()[ids].movedim(-1, 1)

    @torch.no_grad()
    def reseed(self, code_ids: torch.Tensor, vectors: torch.Tensor) -> None:
        """Overwrite codes `code_ids` with `vectors` (K', D): the dead-code restart."""
        self.codebook.data[code_ids] = vectors.to(self.codebook.dtype)
