"""MaskGIT's cosine mask schedule, shared by training (random masks) and decoding (counts)."""
from __future__ import annotations

import math

import torch


def cosine_mask_ratio(progress: torch.Tensor | float):
    """Share of tokens masked at `progress` in [0, 1]: cos(pi/2 * progress)."""
    if isinstance(progress, torch.Tensor):
        return torch.cos(math.pi / 2 * progress)
    return math.cos(math.pi / 2 * progress)


def random_training_mask(batch: int, num_tokens: int, cond_tokens: int = 0,
                         generator: torch.Generator | None = None,
                         device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool (B, N) mask: per sample r = cos(pi/2 u), u ~ U(0,1); ceil(r * free) tokens masked
    (at least one) among the non-conditioning tokens; the first `cond_tokens` never masked."""
    free = num_tokens - cond_tokens
    u = torch.rand(batch, generator=generator, device=device)
    count = torch.ceil(cosine_mask_ratio(u) * free).clamp(1, free).long()
    scores = torch.rand(batch, free, generator=generator, device=device)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    free_mask = ranks < count[:, None]
    cond = torch.zeros(batch, cond_tokens, dtype=torch.bool, device=device)
    return torch.cat([cond, free_mask], dim=1)


def decode_mask_counts(num_unknown: int, steps: int) -> list[int]:
    """Masked-token count before each of the K steps, and after the last (always 0).

    MaskGIT semantics: after step t the number kept masked is floor(U0 * cos(pi/2 (t+1)/K)),
    clamped to [1, masked so far - 1]; the last step fixes every remaining token.
    Decoding (nestgen.decoding.maskgit) and FLOP counting (nestgen.flops) both use this.
    """
    if num_unknown < 1:
        raise ValueError("nothing to decode: every token is given")
    counts = [num_unknown]
    for t in range(steps):
        if t == steps - 1:
            counts.append(0)
            break
        keep = math.floor(num_unknown * cosine_mask_ratio((t + 1) / steps))
        keep = max(1, min(counts[-1] - 1, keep))
        counts.append(keep)
    return counts
