"""Single-process VQ tokenizer training, built around a per-step `TokenizerTrainer` that a
distributed driver can reuse (wrap `trainer.model` in DDP; dead-code restarts then agree
across ranks because the code counts are summed and the seeds broadcast from rank 0).

Loss = MSE(recon, pixels) + codebook loss + beta * commitment loss, plus, with
adversarial_weight > 0 and from step adversarial_start on, that weight times the hinge
generator loss of a patch discriminator trained alongside (discriminator.py). Reported as it
trains: reconstruction MSE and PSNR, and codebook usage over the last `usage_window` steps
(the share of codes used at least once, and the perplexity of the code histogram); with the
discriminator on, its loss and the tokenizer's adversarial term.
"""
from __future__ import annotations

import collections
import time
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from nestgen.device import resolve_device
from nestgen.tokenizers.config import TokenizerConfig
from nestgen.tokenizers.discriminator import PatchDiscriminator, hinge_d_loss, hinge_g_loss
from nestgen.tokenizers.interface import Tokenizer
from nestgen.tokenizers.model import VQTokenizer
from nestgen.tokenizers.pixels import psnr_from_mse
from nestgen.training.metric_window import MetricWindow
from nestgen.training.optim import warmup_cosine_scheduler


def code_perplexity(counts: torch.Tensor) -> float:
    """exp(entropy) of a code histogram: K when all codes are used evenly, 1 when one is."""
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts.double() / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


class CodebookUsage:
    """Code counts summed over a sliding window of the last `window` steps."""

    def __init__(self, codebook_size: int, window: int):
        self._window: collections.deque[torch.Tensor] = collections.deque(maxlen=window)
        self.total = torch.zeros(codebook_size, dtype=torch.long)

    def update(self, counts: torch.Tensor) -> None:
        counts = counts.detach().cpu().long()
        if len(self._window) == self._window.maxlen:
            self.total -= self._window[0]
        self._window.append(counts)
        self.total += counts

    def fraction_used(self) -> float:
        return float((self.total > 0).float().mean())

    def perplexity(self) -> float:
        return code_perplexity(self.total)


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


class TokenizerTrainer:
    """`wrap(module) -> module` lets a distributed driver add DDP (e.g. Ray Train's
    prepare_model) to the tokenizer and the discriminator, built here after seeding, so
    their initial weights depend on cfg.seed only. The discriminator exists only with
    adversarial_weight > 0."""

    def __init__(self, cfg: TokenizerConfig, device: torch.device | None = None, wrap=None):
        cfg.validate()
        self.cfg = cfg
        self.device = device or resolve_device(cfg.device)
        wrap = wrap or (lambda m: m)
        torch.manual_seed(cfg.seed)
        self.model = wrap(VQTokenizer(cfg).to(self.device))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=(0.9, 0.99),
                                     weight_decay=cfg.weight_decay)
        self.sched = warmup_cosine_scheduler(self.opt, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
        self.disc = self.disc_opt = None
        if cfg.adversarial_weight > 0:
            self.disc = wrap(PatchDiscriminator(cfg).to(self.device))
            # GAN practice (VQGAN): low beta1, constant lr
            self.disc_opt = torch.optim.AdamW(self.disc.parameters(), lr=cfg.lr, betas=(0.5, 0.9),
                                              weight_decay=cfg.weight_decay)
        self.step = 0
        self.usage = CodebookUsage(cfg.codebook_size, cfg.usage_window)
        # Counts since the last restart decide which codes are dead.
        self._since_restart = torch.zeros(cfg.codebook_size, dtype=torch.long, device=self.device)
        self._gen = torch.Generator().manual_seed(cfg.seed + 7)

    @property
    def core(self) -> VQTokenizer:
        """The bare tokenizer (unwrapped from DDP if a driver wrapped it)."""
        return getattr(self.model, "module", self.model)

    def train_step(self, pixels: torch.Tensor) -> dict[str, float]:
        cfg = self.cfg
        self.model.train()
        x = pixels.to(self.device, torch.float32)
        out = self.model(x)
        mse = F.mse_loss(out.recon, x)
        loss = mse + out.q_loss
        adversarial = self.disc is not None and self.step >= cfg.adversarial_start
        adv: dict[str, float] = {}
        if adversarial:
            g_loss = hinge_g_loss(self.disc(out.recon))
            loss = loss + cfg.adversarial_weight * g_loss
            adv["g_loss"] = float(g_loss.detach())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        if adversarial:
            adv.update(self._discriminator_step(x, out.recon.detach()))
        counts = torch.bincount(out.ids.flatten(), minlength=cfg.codebook_size)
        self.usage.update(counts)
        self._since_restart += counts
        self.step += 1
        restarted = 0
        if cfg.dead_code_restart_every and self.step % cfg.dead_code_restart_every == 0:
            restarted = self.restart_dead_codes(out.flat_inputs)
        mse_f = float(mse.detach())
        return {"loss": float(loss.detach()), "mse": mse_f, "psnr": psnr_from_mse(mse_f),
                "q_loss": float(out.q_loss.detach()), "usage": self.usage.fraction_used(),
                "perplexity": self.usage.perplexity(), "batch_perplexity": code_perplexity(counts),
                "restarted": restarted, "lr": self.sched.get_last_lr()[0], **adv}

    def _discriminator_step(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
        """One hinge step of the discriminator. Real and reconstructed pixels go through one
        forward call: a DDP-wrapped module allows one forward per backward. (The tokenizer's
        backward also left gradients on the discriminator; they are dropped here.)"""
        self.disc.train()
        logits = self.disc(torch.cat([real, fake]))
        real_logits, fake_logits = logits.chunk(2)
        d_loss = hinge_d_loss(real_logits, fake_logits)
        self.disc_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.disc.parameters(), self.cfg.grad_clip)
        self.disc_opt.step()
        return {"d_loss": float(d_loss.detach()), "d_real": float(real_logits.detach().mean()),
                "d_fake": float(fake_logits.detach().mean())}

    @torch.no_grad()
    def restart_dead_codes(self, flat_inputs: torch.Tensor) -> int:
        """Re-seed codes unused since the last restart with random encoder outputs of this
        batch, so they sit where the data is and get picked again. Returns how many."""
        counts = self._since_restart.clone()
        self._since_restart.zero_()
        if _dist_on():
            dist.all_reduce(counts)           # every rank sees the same dead set
        dead = (counts == 0).nonzero().flatten()
        if dead.numel() == 0:
            return 0
        n = flat_inputs.shape[0]
        pick = (torch.randperm(n, generator=self._gen)[:dead.numel()] if n >= dead.numel()
                else torch.randint(0, n, (dead.numel(),), generator=self._gen))
        seeds = flat_inputs[pick.to(flat_inputs.device)].clone()
        # A little noise keeps codes seeded from near-identical vectors apart.
        seeds += 0.01 * seeds.std() * torch.randn(seeds.shape, generator=self._gen).to(seeds.device)
        if _dist_on():
            dist.broadcast(seeds, src=0)      # identical codebooks on every rank
        self.core.quantizer.reseed(dead, seeds)
        return int(dead.numel())

    def state(self) -> dict:
        """What resuming needs besides the tokenizer's weights (the discriminator's included)."""
        s = {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(), "step": self.step}
        if self.disc is not None:
            core = getattr(self.disc, "module", self.disc)
            s |= {"discriminator": core.state_dict(), "disc_optimizer": self.disc_opt.state_dict()}
        return s

    def load_state(self, state: dict) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        if self.disc is not None and "discriminator" in state:
            getattr(self.disc, "module", self.disc).load_state_dict(state["discriminator"])
            self.disc_opt.load_state_dict(state["disc_optimizer"])


def _as_pixels(x) -> torch.Tensor:
    """A batch item -> float pixels; uint8 (channel-first) is mapped from [0, 255] to [-1, 1]."""
    if isinstance(x, dict):
        x = x["pixels"]
    elif isinstance(x, (tuple, list)):
        x = x[0]                              # (pixels, labels) batches
    x = torch.as_tensor(np.asarray(x)) if isinstance(x, np.ndarray) else x
    return x.float().div(127.5).sub(1.0) if x.dtype == torch.uint8 else x.float()


def _batches(data, cfg: TokenizerConfig) -> Iterator[torch.Tensor]:
    """A tensor/array of samples -> endless seeded random batches; an iterable of batches ->
    its batches, iterated again when it ends (a one-shot iterator ends training early)."""
    if isinstance(data, (torch.Tensor, np.ndarray)):
        pixels = _as_pixels(data)
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        while True:
            yield pixels[torch.randint(0, pixels.shape[0], (cfg.batch_size,), generator=gen)]
    while True:
        empty = True
        for item in data:
            empty = False
            yield _as_pixels(item)
        if empty:
            return


def train_tokenizer(cfg: TokenizerConfig, data: torch.Tensor | np.ndarray | Iterable,
                    progress: bool = True, trainer: TokenizerTrainer | None = None
                    ) -> tuple[VQTokenizer, list[dict]]:
    """Train for cfg.steps steps. `data` is a tensor of samples (N, C, [T,] H, W) in [-1, 1]
    (or uint8 in [0, 255]) or an iterable of such batches. Returns the tokenizer (eval mode)
    and one history row every log_every steps (window means of the step metrics)."""
    trainer = trainer or TokenizerTrainer(cfg)
    history: list[dict] = []
    window = MetricWindow()      # g_loss / d_loss exist from adversarial_start on
    restarted, seen = 0, 0
    bar = tqdm(total=cfg.steps, initial=trainer.step, desc=f"tokenizer[{cfg.kind}]",
               disable=not progress, dynamic_ncols=True)
    t0 = time.perf_counter()
    batches = _batches(data, cfg)
    while trainer.step < cfg.steps:
        batch = next(batches, None)
        if batch is None:
            break
        m = trainer.train_step(batch)
        seen += batch.shape[0]
        restarted += m["restarted"]
        window.add({k: m[k] for k in ("loss", "mse", "q_loss", "g_loss", "d_loss") if k in m})
        if trainer.step % cfg.log_every == 0 or trainer.step == cfg.steps:
            row = window.means()
            row.update(step=trainer.step, psnr=psnr_from_mse(row["mse"]), usage=m["usage"],
                       perplexity=m["perplexity"], restarted=restarted, lr=m["lr"],
                       samples_per_s=seen / (time.perf_counter() - t0))
            history.append(row)
            window.reset()
            bar.set_postfix(psnr=f"{row['psnr']:.2f}", usage=f"{row['usage']:.2f}",
                            ppl=f"{row['perplexity']:.0f}")
        bar.update(1)
    bar.close()
    return trainer.core.eval(), history


@torch.no_grad()
def evaluate_tokenizer(model: Tokenizer, pixels: torch.Tensor, batch_size: int = 64) -> dict:
    """Reconstruction MSE / PSNR of encode->decode on `pixels` and the codebook usage there."""
    pixels = _as_pixels(pixels)
    sq, n = 0.0, 0
    counts = torch.zeros(model.vocab_size, dtype=torch.long)
    for chunk in pixels.split(batch_size):
        ids = model.encode(chunk)
        recon = model.decode(ids).cpu()
        sq += float((recon - chunk).pow(2).sum())
        n += chunk.numel()
        counts += torch.bincount(ids.flatten().cpu(), minlength=model.vocab_size)
    mse = sq / n
    return {"mse": mse, "psnr": psnr_from_mse(mse), "usage": float((counts > 0).float().mean()),
            "perplexity": code_perplexity(counts)}
