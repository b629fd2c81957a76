"""GPU paths: run on a CUDA machine, skipped (with the reason) elsewhere."""
import dataclasses

import pytest
import torch

from nestgen.config import DecodeConfig, NestgenConfig, TrainConfig
from nestgen.decoding.maskgit import decode
from nestgen.model.nested_transformer import NestedTransformer
from nestgen.training.loop import NestedTrainer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs a CUDA GPU (torch.cuda.is_available() is False)")]


def test_cuda_decode_cached_equals_uncached(small_model_cfg):
    model = NestedTransformer(small_model_cfg).cuda().eval()
    labels = torch.tensor([0, 1, 2, 0])
    d = DecodeConfig(schedule="8x3,4x3,2x3,1x3", steps=12, guidance_scale=1.0)
    a = decode(model, labels, dataclasses.replace(d, cache="none"), seeds=[1, 2, 3, 4]).tokens
    b = decode(model, labels, dataclasses.replace(d, cache="every:1"), seeds=[1, 2, 3, 4]).tokens
    assert a.is_cuda and torch.equal(a, b)


def test_cuda_sub_model_matches_cpu(small_model_cfg):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = NestedTransformer(small_model_cfg).eval()
    tokens = torch.randint(0, small_model_cfg.vocab_size, (2, small_model_cfg.num_tokens))
    labels = torch.tensor([0, 1])
    with torch.no_grad():
        cpu = model(tokens, labels, 4)
        gpu = model.cuda()(tokens.cuda(), labels.cuda(), 4).cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=1e-4)


def test_bf16_autocast_training_reduces_loss(small_model_cfg):
    cfg = NestgenConfig(model=small_model_cfg, train=TrainConfig(
        steps=200, batch_size=64, lr=3e-3, warmup_steps=5, precision="bf16", device="cuda"))
    g = torch.Generator().manual_seed(0)
    templates = torch.randint(0, small_model_cfg.vocab_size, (3, small_model_cfg.num_tokens), generator=g)
    labels = torch.randint(0, 3, (256,), generator=g)
    tokens = templates[labels]
    trainer = NestedTrainer(cfg)
    first = trainer.train_step(tokens[:64], labels[:64])
    for i in range(199):
        last = trainer.train_step(tokens[(i % 4) * 64:(i % 4 + 1) * 64], labels[(i % 4) * 64:(i % 4 + 1) * 64])
    for f in small_model_cfg.nest_factors:
        assert float(last[f"loss/f{f}"]) < 0.75 * float(first[f"loss/f{f}"]), f
    assert float(last["loss/f1"]) < 0.5 * float(first["loss/f1"])
    assert next(trainer.core.parameters()).dtype == torch.float32   # autocast, fp32 master weights


def test_cuda_graph_decode_equals_eager(small_model_cfg):
    from nestgen.decoding.cuda_graph import GraphedDecoder
    model = NestedTransformer(small_model_cfg).cuda().eval()
    dec = GraphedDecoder(model)
    for cache, guidance in (("on_switch", 0.0), ("none", 1.5), ("every:2", 0.0)):
        d = DecodeConfig(schedule="8x3,4x3,2x3,1x3", steps=12, cache=cache, guidance_scale=guidance)
        for seeds, labels in (([1, 2, 3], [0, 1, 2]), ([7, 8, 9], [2, 2, 0])):   # 2nd call replays
            lab = torch.tensor(labels, device="cuda")
            eager = decode(model, lab, d, seeds=seeds).tokens
            assert torch.equal(dec(lab, d, seeds), eager), (cache, guidance, seeds)
    cond = torch.randint(0, small_model_cfg.vocab_size, (3, 4), device="cuda")
    d = DecodeConfig(schedule="4x2,1x2", steps=4, cache="on_switch")
    lab = torch.tensor([0, 1, 2], device="cuda")
    assert torch.equal(dec(lab, d, [4, 5, 6], cond), decode(model, lab, d, [4, 5, 6], cond).tokens)


def test_cuda_graph_worker_equals_eager_decode(small_model_cfg):
    from nestgen.decoding.worker import DecodeWorker
    model = NestedTransformer(small_model_cfg).cuda().eval()
    labels, cond = torch.tensor([0, 1, 2, 0]), torch.randint(0, small_model_cfg.vocab_size, (4, 4))
    d = DecodeConfig(schedule="8x3,4x3,2x3,1x3", steps=12, cache="on_switch", guidance_scale=1.0)
    worker = DecodeWorker(model, small_model_cfg.grid, cuda_graphs=True, warm_up=True)
    for c in (None, cond):
        eager = decode(model, labels, d, seeds=[1, 2, 3, 4], cond=c).tokens.cpu()
        assert torch.equal(worker.run(d, labels, [1, 2, 3, 4], c).tokens, eager)
        assert worker.graphs.captured(4, d, 0 if c is None else 4)
        assert torch.equal(worker.run(d, labels, [1, 2, 3, 4], c).tokens, eager)    # replayed
