"""The evaluation's config section: which decode variants are scored, how, and the schedule
search; everything nestgen.evaluation reads. The Ray step's own settings (which checkpoint,
how many actors) extend it in pipelines.config."""
from __future__ import annotations

from dataclasses import dataclass, field

from nestgen.configschema import check
from nestgen.decoding.config import check_cache_policies
from nestgen.decoding.schedule import PRESETS


@dataclass
class SearchConfig:
    """Schedule search under a GFLOPs budget (nestgen.evaluation.search): candidates are
    every split of K steps over the nest factors (small -> large) x cache policies; those
    within budget are scored on held-out seeds and the best is evaluated with the rest."""
    enabled: bool = True
    budget_gflops: float = 0.0       # per sample; 0 -> budget_fraction x the baseline's
    budget_fraction: float = 0.34    # ~3x fewer GFLOPs than the full model, the paper's target
    steps: list[int] = field(default_factory=lambda: [12])
    caches: list[str] = field(default_factory=lambda: ["none", "on_switch"])
    max_candidates: int = 8          # scored candidates (the most compute first, spread over shapes)
    num_samples: int = 200
    seed: int = 1_000_000            # sample seeds disjoint from the final evaluation's

    def validate(self) -> None:
        check(self.budget_gflops >= 0, "budget_gflops", "must be >= 0")
        check(0 < self.budget_fraction <= 1, "budget_fraction", "must be in (0, 1]")
        check(len(self.steps) >= 1 and all(k >= 1 for k in self.steps), "steps", "must be >= 1 each")
        check(self.max_candidates >= 1, "max_candidates", "must be >= 1")
        check(self.num_samples >= 2, "num_samples", "must be >= 2")
        check_cache_policies(self.caches, "caches")


@dataclass
class EvaluateConfig:
    """Quality against GFLOPs for every variant schedule x cache x guidance_scale, with the
    same labels and seeds for each (nestgen.evaluation.run)."""
    schedules: list[str] = field(default_factory=lambda: list(PRESETS))   # presets or strings like 8x3,1x9
    caches: list[str] = field(default_factory=lambda: ["none", "on_switch"])
    guidance_scales: list[float] = field(default_factory=lambda: [0.0])
    num_samples: int = 500
    seed: int = 0                    # sample i of every variant uses seed + i
    batch_size: int = 250
    metrics: list[str] = field(default_factory=lambda: ["auto"])   # auto | fid is fvd fd_digits ...
    quality_metric: str = "auto"     # the one on the plot and in the search; auto: fid/fvd if available
    reference_stats: str = ""        # .npz (mu, sigma) for FID/FVD; "" -> training split through the tokenizer
    feature_net: str = ""            # Inception / I3D TorchScript path; "" -> env var or cache
    grid_samples: int = 40           # samples in each variant's grid (and video)
    interval_chunks: int = 50        # contiguous chunks of samples the bootstrap resamples (fixed: memory)
    bootstrap_replicates: int = 500  # 95% intervals of each metric and of its change vs the baseline; 0: none
    claim_threshold: float = 0.10    # the claim check: quality change vs the baseline within this
    search: SearchConfig = field(default_factory=SearchConfig)

    def validate(self) -> None:
        check(len(self.schedules) >= 1, "schedules", "must not be empty")
        check_cache_policies(self.caches, "caches")
        check(len(self.guidance_scales) >= 1 and all(g >= 0 for g in self.guidance_scales),
              "guidance_scales", "must be >= 0 each")
        check(self.num_samples >= 2, "num_samples", "must be >= 2 (a covariance needs two samples)")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.grid_samples >= 1, "grid_samples", "must be >= 1")
        check(self.interval_chunks >= 2, "interval_chunks", "must be >= 2")
        check(self.bootstrap_replicates >= 0, "bootstrap_replicates", "must be >= 0")
        check(self.claim_threshold > 0, "claim_threshold", "must be > 0")
