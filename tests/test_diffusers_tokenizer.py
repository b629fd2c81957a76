"""A Hugging Face diffusers VQModel folder as the tokenizer: loading (local and fsspec, never
the Hub), encode/decode against the model's own forward pass, content hash, and the path
through tokenize (Ray), training, rendering and serving."""
import base64
import io
import json
import shutil
import socket

import fsspec
import numpy as np
import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers is not installed (pip install -e '.[diffusers]')")

from nestgen.tokenizers import DiffusersVQTokenizer, Tokenizer, images_to_pixels, load_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def vqmodel_dir(tmp_path_factory):
    """A tiny VQModel (16x16 RGB -> 8x8 ids, 16 codes) in the save_pretrained layout."""
    from diffusers import VQModel
    torch.manual_seed(0)
    model = VQModel(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                    block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, num_vq_embeddings=16,
                    norm_num_groups=4, sample_size=16)
    # A codebook spread like the encoder's outputs, so images use several codes.
    with torch.no_grad():
        lat = model.encode(torch.rand(8, 3, 16, 16) * 2 - 1).latents.permute(0, 2, 3, 1).reshape(-1, 4)
        model.quantize.embedding.weight.copy_(lat[torch.randperm(len(lat))[:16]])
    out = tmp_path_factory.mktemp("vq") / "vqmodel"
    model.save_pretrained(str(out))
    return out


def _no_network(monkeypatch):
    def refuse(self, address, *a, **k):
        raise AssertionError(f"network access during tokenizer loading: {address}")
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_a_vqmodel_folder_encodes_and_decodes_as_the_model_does(vqmodel_dir, monkeypatch):
    from diffusers import VQModel
    _no_network(monkeypatch)
    tok = load_tokenizer(str(vqmodel_dir))
    assert isinstance(tok, DiffusersVQTokenizer) and isinstance(tok, Tokenizer)
    assert (tok.kind, tok.channels, tok.image_size, tok.grid, tok.vocab_size) == ("image", 3, 16, [8, 8], 16)
    x = torch.rand(5, 3, 16, 16) * 2 - 1
    ids = tok.encode(x, batch_size=2)
    assert ids.shape == (5, 8, 8) and ids.dtype == torch.long
    assert 0 <= int(ids.min()) and int(ids.max()) < 16 and len(ids.unique()) > 1
    pixels = tok.decode(ids, batch_size=2)
    assert pixels.shape == x.shape and float(pixels.abs().max()) <= 1
    # decode(encode(x)) is the model's own quantized reconstruction (its forward pass).
    ref = VQModel.from_pretrained(str(vqmodel_dir)).eval()
    with torch.no_grad():
        assert torch.allclose(pixels, ref(x).sample.clamp(-1, 1), atol=1e-5)
    with pytest.raises(ValueError, match="expects"):
        tok.encode(torch.zeros(1, 1, 16, 16))


def test_lookup_from_codebook_models_decode_the_same_ids(vqmodel_dir, tmp_path):
    """aMUSEd-style configs look the ids up inside VQModel.decode: same pixels."""
    other = tmp_path / "lookup"
    shutil.copytree(vqmodel_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(cfg | {"lookup_from_codebook": True}))
    a, b = load_tokenizer(str(vqmodel_dir)), load_tokenizer(str(other))
    ids = torch.randint(0, 16, (2, 8, 8))
    assert torch.allclose(a.decode(ids), b.decode(ids), atol=1e-6)
    assert a.hash != b.hash            # the config is part of what the hash names


def test_fsspec_url_same_hash_and_replaced_weights_are_refused(vqmodel_dir, tmp_path, monkeypatch):
    _no_network(monkeypatch)
    local = load_tokenizer(str(vqmodel_dir))
    fs = fsspec.filesystem("memory")
    for f in vqmodel_dir.iterdir():
        fs.pipe(f"/vq-test/{f.name}", f.read_bytes())
    remote = load_tokenizer("memory://vq-test", expected_hash=local.hash)
    assert remote.hash == local.hash and len(local.hash) == 16
    assert remote.describe()["config"]["_class_name"] == "VQModel"

    weights = "/vq-test/diffusion_pytorch_model.safetensors"
    from safetensors.torch import load as st_load, save as st_save
    state = st_load(fs.cat(weights))
    state["quantize.embedding.weight"] = state["quantize.embedding.weight"] + 0.01
    fs.pipe(weights, st_save(state))
    with pytest.raises(ValueError, match="was recorded"):
        load_tokenizer("memory://vq-test", expected_hash=local.hash)
    fs.rm("/vq-test", recursive=True)


def test_non_vq_diffusers_folders_and_pickled_weights_are_refused(vqmodel_dir, tmp_path):
    kl = tmp_path / "kl"
    shutil.copytree(vqmodel_dir, kl)
    (kl / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(ValueError, match="only VQModels"):
        load_tokenizer(str(kl))
    pickled = tmp_path / "bin"
    pickled.mkdir()
    shutil.copy(vqmodel_dir / "config.json", pickled)
    (pickled / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="no safetensors"):
        load_tokenizer(str(pickled))


def test_tokenize_train_render_and_serve_through_a_vqmodel(ray_local, digits_png, vqmodel_dir, tmp_path):
    from PIL import Image

    from nestgen.checkpoint import load_generator, save_checkpoint
    from nestgen.config import NestgenConfig
    from nestgen.configschema import from_dict
    from nestgen.data.shards import load_split_tokens
    from nestgen.local_run import sample_grid
    from nestgen.render import tokens_to_pixels
    from nestgen.serving.config import EngineConfig
    from nestgen.serving.engine import Engine
    from nestgen.serving.request import GenerateRequest
    from nestgen.training.loop import train_on_tokens
    from pipelines.config import TokenizeConfig
    from pipelines.tokenize import tokenize_to_shards

    tok = load_tokenizer(str(vqmodel_dir))
    shards = tmp_path / "shards"
    m = tokenize_to_shards(str(digits_png), str(shards), str(vqmodel_dir), TokenizeConfig(batch_size=256))
    assert m["tokenizer"]["hash"] == tok.hash and m["tokenizer"]["url"] == str(vqmodel_dir)
    assert m["tokenizer"]["format"] == "diffusers-vqmodel/1"
    assert m["grid_shape"] == [8, 8] and m["vocab_size"] == 16 and m["failed"] == []
    tokens, labels, _ = load_split_tokens(str(shards), "train")
    assert len(tokens) == len(list((digits_png / "train").glob("*/*.png")))
    assert 0 <= int(tokens.min()) and int(tokens.max()) < 16

    # Exactly the adapter's ids of that image.
    import pyarrow.parquet as pq

    from nestgen.data.shards import shard_urls
    row = pq.ParquetDataset(shard_urls(str(shards), "train")).read().to_pylist()[0]
    img = np.asarray(Image.open(row["source_uri"]).convert("RGB"))[None]
    assert row["tokens"] == tok.encode(images_to_pixels(img)).reshape(-1).tolist()

    cfg = from_dict(NestgenConfig, {
        "name": "vqmodel-test",
        "model": {"vocab_size": 16, "grid": [8, 8], "num_classes": 10, "width": 32, "depth": 2, "heads": 4,
                  "nest_factors": [1, 2]},
        "data": {"source": "shards", "url": str(shards)},
        "train": {"steps": 4, "batch_size": 16, "log_every": 2},
        "decode": {"steps": 4, "schedule": "2x2,1x2"}})
    trainer, history = train_on_tokens(cfg, tokens, labels, progress=False)
    losses = [v for h in history for k, v in h.items() if k.startswith("loss")]
    assert losses and np.isfinite(losses).all()
    ckpt = save_checkpoint(str(tmp_path / "gen.pt"), cfg, trainer.core, **trainer.state(),
                           tokenizer_hash=m["tokenizer"]["hash"])

    model, gcfg, gtok = load_generator(ckpt)
    assert isinstance(gtok, DiffusersVQTokenizer) and gtok.hash == tok.hash
    pics = tokens_to_pixels(tokens[:3], gcfg.model.grid, gtok)
    assert pics.shape == (3, 16, 16, 3) and pics.dtype == np.uint8
    out = sample_grid(model, gcfg, gcfg.decode, str(tmp_path / "grid.png"), num=4, tokenizer=gtok)
    assert Image.open(tmp_path / "grid.png").size[0] >= 16 and out

    engine = Engine(EngineConfig(checkpoint=ckpt, auto_presets=[]), device="cpu")
    assert engine.info()["tokenizer"] == {"url": str(vqmodel_dir), "hash": tok.hash}
    (resp,) = engine.run([engine.resolve(GenerateRequest(class_label=3, num_samples=1, seed=1, format="png"))])
    png = Image.open(io.BytesIO(base64.b64decode(resp["samples"][0]["png"])))
    assert png.size == (16, 16)
