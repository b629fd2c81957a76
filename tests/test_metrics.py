"""nestgen.metrics: Fréchet distance against an independent reference, stats files, feature
nets loaded from TorchScript files (tiny stand-ins with the real call interfaces), and the
digits feature nets trained for real."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from nestgen.metrics import (I3D, INCEPTION, FeatureNetUnavailable, RunningStats, chunks_of,
                             digits_accuracy_metric, digits_frechet_metric, digits_stats, feature_stats,
                             fid_metric, frame_pred_metric, frechet_distance, fvd_metric, i3d_stats,
                             inception_stats, is_metric, load_digits_net, load_feature_net, load_stats, net_hash,
                             save_digits_net, save_stats, stats_hash, train_clip_classifier,
                             train_digit_classifier)
from nestgen.metrics.frechet import frechet_distance_stats
from nestgen.metrics.stand_in_nets import StandInInception, save_stand_in
from nestgen.metrics.sums import contiguous_parts, inception_score, inception_sums

# torch 2.13 deprecates TorchScript, but the standard Inception/I3D files are TorchScript.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*:DeprecationWarning")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # These nets are tiny; on a shared 2-core machine two intra-op threads mostly spin-wait
    # against other processes (measured 5-20x slower training), so run them on one.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _one(metric, pixels, labels=None, targets=None, size=None):
    """A streamed metric's one result on these samples, reduced in chunks of `size` (None: one)."""
    [res] = metric.over(chunks_of(pixels, labels, targets, size))
    return res


# ----------------------------------------------------------------------------- Fréchet

def reference_fd(x1: np.ndarray, x2: np.ndarray) -> float:
    """Independent float64 reference: Tr sqrt(S1 S2) = Tr sqrt(A S2 A) with A = S1^(1/2),
    a symmetric PSD matrix whose root comes from eigh (no sqrtm of a non-symmetric product)."""
    m1, m2 = x1.mean(0), x2.mean(0)
    s1, s2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)
    w, v = np.linalg.eigh(s1)
    a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    ev = np.linalg.eigvalsh(a @ s2 @ a)
    return float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(ev, 0, None)).sum())


def test_frechet_matches_reference_on_gaussians():
    rng = np.random.default_rng(0)
    d = 12
    a = rng.normal(size=(d, d))
    x1 = rng.normal(size=(800, d)) @ a + 0.3
    x2 = rng.normal(size=(600, d)) @ (a + 0.2 * rng.normal(size=(d, d))) - 0.1
    s1, s2 = feature_stats(x1), feature_stats(x2)
    got = frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma)
    assert got == pytest.approx(reference_fd(x1, x2), rel=1e-9, abs=1e-9)
    assert got > 1.0
    # symmetric in its arguments
    assert frechet_distance_stats(s2, s1) == pytest.approx(got, rel=1e-9)


def test_frechet_identical_and_shifted_means():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 8)) @ rng.normal(size=(8, 8))
    s = feature_stats(x)
    assert abs(frechet_distance(s.mu, s.sigma, s.mu, s.sigma)) < 1e-8 * np.trace(s.sigma)
    shift = np.arange(8, dtype=np.float64) * 0.5
    t = feature_stats(x + shift)     # same covariance, mean moved: FD = ||shift||^2 exactly
    assert frechet_distance_stats(s, t) == pytest.approx(float(shift @ shift), rel=1e-8)


def test_frechet_singular_covariance_uses_eps_fallback():
    rng = np.random.default_rng(2)
    x1 = rng.normal(size=(10, 32))          # fewer samples than dims: rank-deficient covariances
    x2 = rng.normal(size=(10, 32)) + 1.0
    s1, s2 = feature_stats(x1), feature_stats(x2)
    fd = frechet_distance_stats(s1, s2)
    assert np.isfinite(fd)
    assert fd == pytest.approx(reference_fd(x1, x2), rel=1e-3)


def test_running_stats_match_batch_stats_and_are_stable():
    rng = np.random.default_rng(3)
    # a large common offset breaks the naive x^T x / n - mu mu^T formula in float64
    x = rng.normal(size=(1000, 6)) * 1e-3 + 1e4
    rs = RunningStats()
    for i in range(0, len(x), 37):      # numpy and torch batches alike; update() chains
        assert rs.update(torch.from_numpy(x[i:i + 37]) if i % 2 else x[i:i + 37]) is rs
    got, ref = rs.stats(), feature_stats(x)
    assert got.n == 1000
    np.testing.assert_allclose(got.mu, ref.mu, rtol=1e-12)
    np.testing.assert_allclose(got.sigma, np.cov(x, rowvar=False), rtol=1e-6, atol=1e-14)
    np.testing.assert_allclose(got.sigma, ref.sigma, rtol=1e-6, atol=1e-14)


def test_stats_npz_round_trip_and_hash(tmp_path):
    rng = np.random.default_rng(4)
    s = feature_stats(rng.normal(size=(100, 5)))
    path = tmp_path / "sub" / "ref.npz"
    save_stats(str(path), s)
    with np.load(path) as raw:                       # the usual keys, readable without nestgen
        np.testing.assert_array_equal(raw["mu"], s.mu)
        np.testing.assert_array_equal(raw["sigma"], s.sigma)
    back = load_stats(str(path))
    np.testing.assert_array_equal(back.mu, s.mu)
    assert (back.n, back.ddof, back.hash()) == (100, 1, s.hash())
    assert len(s.hash()) == 16 and int(s.hash(), 16) >= 0
    bumped = s.sigma.copy()
    bumped[0, 0] += 1e-12
    assert stats_hash(s.mu, bumped) != s.hash()
    # a third-party file with only mu, sigma: count and ddof are unknown, not invented
    np.savez(tmp_path / "other.npz", mu=s.mu.astype(np.float32), sigma=s.sigma)
    other = load_stats(str(tmp_path / "other.npz"))
    assert (other.n, other.ddof) == (0, None)
    # fsspec URLs work too
    save_stats("memory://stats/ref.npz", s)
    assert load_stats("memory://stats/ref.npz").hash() == s.hash()


# ----------------------------------------------------------------------------- feature net files

def test_missing_feature_net_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("NESTGEN_INCEPTION_PATH", raising=False)
    monkeypatch.setenv("NESTGEN_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(FeatureNetUnavailable) as e:
        load_feature_net(INCEPTION, device="cpu")
    msg = str(e.value)
    assert "inception-2015-12-05.pt" in msg
    assert str(tmp_path / "cache" / "inception-2015-12-05.pt") in msg
    assert "NESTGEN_INCEPTION_PATH" in msg and "never downloads" in msg
    assert isinstance(e.value, FileNotFoundError)

    missing = tmp_path / "nope" / "i3d_torchscript.pt"
    monkeypatch.setenv("NESTGEN_I3D_PATH", str(missing))
    with pytest.raises(FeatureNetUnavailable, match="NESTGEN_I3D_PATH") as e:
        load_feature_net(I3D, device="cpu")
    assert str(missing) in str(e.value) and "i3d_torchscript.pt" in str(e.value)
    with pytest.raises(FeatureNetUnavailable, match="configured path"):
        load_feature_net(I3D, path=tmp_path / "given.pt", device="cpu")


def _stand_in_inception(path) -> str:
    """A small stand-in Inception (16-d features, 10 classes, resizing to 16x16) written to
    path; returns its sha256."""
    return save_stand_in(StandInInception(features=16, classes=10, size=16), path)


def _random_images(n: int, seed: int, size: int = 12, offset: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 200, size=(n, size, size, 3))
    return np.clip(base + offset, 0, 255).astype(np.uint8)


def test_fid_and_is_through_torchscript_file(tmp_path, monkeypatch):
    path = tmp_path / "inception-2015-12-05.pt"
    digest = _stand_in_inception(path)
    monkeypatch.setenv("NESTGEN_INCEPTION_PATH", str(path))
    monkeypatch.setenv("NESTGEN_INCEPTION_SHA256", digest)
    net = load_feature_net(INCEPTION, device="auto")
    assert net.sha256 == digest and net.device.type in ("cpu", "cuda")

    real, fake = _random_images(300, 0), _random_images(200, 1, offset=40)
    ref = inception_stats(net, real, batch_size=64)
    fid = fid_metric(net, ref)
    res = _one(fid, fake, size=50)
    # equals the Fréchet distance of the module's own features, computed directly
    with torch.no_grad():
        m = torch.jit.load(str(path))
        f_real = m(torch.from_numpy(real).permute(0, 3, 1, 2).contiguous(), return_features=True).double().numpy()
        f_fake = m(torch.from_numpy(fake).permute(0, 3, 1, 2).contiguous(), return_features=True).double().numpy()
    assert res.value == pytest.approx(reference_fd(f_fake, f_real), rel=1e-6)
    assert res.value > 1.0
    assert _one(fid, real).value == pytest.approx(0.0, abs=1e-6)

    p = res.protocol
    assert res.name == "fid" and p["metric"] == "fid" and p["num_samples"] == 200
    assert p["reference"]["stats_hash"] == ref.hash() and p["reference"]["num_samples"] == 300
    assert p["feature_net"]["sha256_full"] == digest and p["feature_net"]["sha256"] == digest[:16]
    assert p["feature_net"]["file"] == "inception-2015-12-05.pt"
    assert p["input_resolutions"] == [[12, 12]] and "299" in p["resize"]
    assert p["covariance_ddof"] == 1
    flat = res.flat()
    assert flat["fid"] == res.value and flat["fid/protocol/reference.stats_hash"] == ref.hash()

    # layouts: NHWC, NCHW and other chunks all give the same number (to float32 rounding: on
    # CUDA the net's kernels differ with batch size)
    nchw = np.ascontiguousarray(fake.transpose(0, 3, 1, 2))
    assert _one(fid, nchw).value == pytest.approx(res.value, rel=1e-6)
    assert _one(fid, fake, size=33).value == pytest.approx(res.value, rel=1e-6)
    # reference from an .npz file: source and hash recorded
    save_stats(str(tmp_path / "ref.npz"), ref)
    from_file = _one(fid_metric(net, str(tmp_path / "ref.npz")), fake)
    # The .npz round trip is exact; the features are recomputed, which on CUDA varies at ~1e-9.
    assert from_file.value == pytest.approx(res.value, rel=1e-6)
    assert from_file.protocol["reference"]["source"].endswith("ref.npz")
    # grayscale is repeated to RGB, like StyleGAN2-ADA
    gray = fake[..., 0]
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    assert _one(fid, gray).value == pytest.approx(_one(fid, rgb).value, rel=1e-6)
    with pytest.raises(TypeError, match="uint8"):
        _one(fid, fake.astype(np.float32))

    # Inception Score: the standard formula on no_output_bias softmax, in split order
    is_res = _one(is_metric(net, splits=4), fake)
    with torch.no_grad():
        probs = m(torch.from_numpy(nchw), no_output_bias=True).double().numpy()
    scores = []
    for part in np.array_split(probs, 4):
        py = part.mean(0, keepdims=True)
        scores.append(np.exp((part * (np.log(part) - np.log(py))).sum(1).mean()))
    assert is_res.value == pytest.approx(np.mean(scores), rel=1e-6)
    assert is_res.extra["std"] == pytest.approx(np.std(scores), rel=1e-5)
    assert is_res.protocol["num_splits"] == 4 and is_res.protocol["num_classes"] == 10
    # chunks that cut the splits give the same splits (sample i's split is by its index)
    assert _one(is_metric(net, splits=4), fake, size=33).value == pytest.approx(is_res.value, rel=1e-6)


def test_inception_score_limits():
    def score(probs: np.ndarray, splits: int) -> float:
        return inception_score(inception_sums(probs, contiguous_parts(np.arange(len(probs)), len(probs), splits),
                                              splits))[0]
    assert score(np.full((100, 10), 0.1), 5) == pytest.approx(1.0)
    onehot = np.eye(10)[np.arange(100) % 10]          # confident and diverse: IS = #classes
    assert score(onehot, 5) == pytest.approx(10.0)


def test_fvd_through_torchscript_file(fake_i3d_file, monkeypatch):
    path = fake_i3d_file
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setenv("NESTGEN_I3D_PATH", str(path))
    monkeypatch.setenv("NESTGEN_I3D_SHA256", digest)
    net = load_feature_net(I3D, device="auto")
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, size=(16, 16, 8, 8, 3), dtype=np.uint8)       # BTHWC RGB
    still = np.repeat(real[:, :1], 16, axis=1)                                   # no motion
    ref = i3d_stats(net, real, batch_size=8)
    fvd = fvd_metric(net, ref)
    assert _one(fvd, real, size=16).value == pytest.approx(0.0, abs=1e-6)
    res = _one(fvd, still)
    other = rng.integers(0, 256, size=real.shape, dtype=np.uint8)                # more clips like the real ones
    assert res.value > 20 * _one(fvd, other).value                               # the still clips are far off
    p = res.protocol
    assert p["metric"] == "fvd" and p["num_samples"] == 16 and p["num_frames"] == 16
    assert p["preprocess_mode"] == "external" and "224" in p["resize"]
    assert p["feature_net"]["sha256_full"] == digest and p["reference"]["stats_hash"] == ref.hash()
    assert p["clip_shapes_thw"] == [[16, 8, 8]] and p["feature_dim"] == 6
    # the same clips as BCTHW give the same number
    bcthw = np.ascontiguousarray(still.transpose(0, 4, 1, 2, 3))
    assert _one(fvd, bcthw).value == pytest.approx(res.value, rel=1e-6)
    # internal mode (uint8 straight to the net, which rescales and resizes): close, recorded
    internal = _one(fvd_metric(net, i3d_stats(net, real, mode="internal"), mode="internal"), still)
    assert internal.protocol["preprocess_mode"] == "internal"
    assert internal.value == pytest.approx(res.value, rel=0.1)
    with pytest.raises(ValueError, match="16 frames"):
        _one(fvd, real[:, :8])


# ----------------------------------------------------------------------------- digits nets

@pytest.fixture(scope="module")
def digit_net():
    net, info = train_digit_classifier(epochs=10, seed=0)
    return net, info


def _accuracy(name, net, x, labels, info=None):
    return _one(digits_accuracy_metric(name, net, info), x, np.asarray(labels))


def _frechet(name, net, x, reference, info=None):
    """x's distance to the reference samples' digits features."""
    return _one(digits_frechet_metric(name, net, info, digits_stats(net, reference), "test samples"), x)


def test_digit_classifier_accuracy_and_fd_digits(digit_net):
    from nestgen.metrics.digits_train import digits_image_splits

    net, info = digit_net
    print(f"digits classifier: {info}")
    assert info["holdout_accuracy"] > 0.95
    assert info["train_seconds"] < 60
    (tr_x, tr_y), (ho_x, ho_y) = digits_image_splits()
    acc = _accuracy("digits_accuracy", net, ho_x, ho_y, info=info)
    assert acc.name == "digits_accuracy" and acc.value == pytest.approx(info["holdout_accuracy"])
    assert acc.protocol["feature_net"]["net_hash"] == info["net_hash"]
    # the requested labels matter: samples that ignore them score near chance
    assert _accuracy("digits_accuracy", net, ho_x, (ho_y + 1) % 10).value < 0.2
    # any size / RGB input works (resized to the net's 16x16): 32x32 RGB upscales still classify
    big = np.repeat(np.repeat(ho_x, 4, axis=1), 4, axis=2)
    big_rgb = np.repeat(big[..., None], 3, axis=-1)
    assert _accuracy("digits_accuracy", net, big_rgb, ho_y).value > 0.9

    rng = np.random.default_rng(0)
    fd_real = _frechet("fd_digits", net, ho_x, tr_x, info=info)
    noise = rng.integers(0, 256, size=ho_x.shape, dtype=np.uint8)
    fd_noise = _frechet("fd_digits", net, noise, tr_x, info=info)
    blank = np.zeros_like(ho_x)
    blank[:, 2:6, 2:6] = 255
    fd_blob = _frechet("fd_digits", net, blank, tr_x)
    collapsed = _frechet("fd_digits", net, tr_x[tr_y == 3][:len(ho_x)], tr_x)        # one class only
    # the floor: 180 train digits vs the other train digits (finite-sample bias at n=180, d=64)
    perm = rng.permutation(len(tr_x))
    floor = _frechet("fd_digits", net, tr_x[perm[:len(ho_x)]], tr_x[perm[len(ho_x):]])
    print(f"fd_digits holdout {fd_real.value:.2f} floor {floor.value:.2f} noise {fd_noise.value:.2f} "
          f"one-class {collapsed.value:.2f} blob {fd_blob.value:.2f}")
    assert fd_real.name == "fd_digits" and fd_real.protocol["metric"] == "fd_digits"
    assert fd_real.value < 4.0 * floor.value
    assert fd_real.value < 0.2 * fd_noise.value
    assert fd_real.value < 0.05 * collapsed.value and fd_real.value < 0.05 * fd_blob.value
    assert fd_real.protocol["num_samples"] == len(ho_x)
    assert fd_real.protocol["reference"]["num_samples"] == len(tr_x)
    assert "not FID" in fd_real.protocol["comparable_to"]


def test_digit_net_save_load_round_trip(digit_net):
    net, info = digit_net
    file_hash = save_digits_net("memory://nets/digits.pt", net, info)
    back, binfo = load_digits_net("memory://nets/digits.pt")
    assert binfo["file_sha256"] == file_hash and binfo["net_hash"] == net_hash(net) == info["net_hash"]
    assert binfo["holdout_accuracy"] == info["holdout_accuracy"]
    x = np.random.default_rng(0).integers(0, 256, size=(20, 8, 8), dtype=np.uint8)
    with torch.no_grad():
        torch.testing.assert_close(back.features(back.preprocess(x)), net.features(net.preprocess(x)))


def test_digit_training_is_seeded():
    a, ia = train_digit_classifier(epochs=1, seed=3)
    b, ib = train_digit_classifier(epochs=1, seed=3)
    assert ia["net_hash"] == ib["net_hash"]


def _moving_clips():
    try:
        from nestgen.data.digits import digit_split
        from nestgen.data.image_files import upscaled_digits
        from nestgen.data.moving_digits import make_moving_digit_clips
    except ImportError:                                   # pragma: no cover - data module absent
        pytest.skip("nestgen.data.moving_digits is not available")
    glyphs, _ = upscaled_digits(14)
    train_pool, val_pool = digit_split(len(glyphs), 0.2, 0)
    tr = make_moving_digit_clips(600, frames=16, size=32, seed=1, pool=train_pool)
    va = make_moving_digit_clips(200, frames=16, size=32, seed=2, pool=val_pool)
    va2 = make_moving_digit_clips(200, frames=16, size=32, seed=3, pool=val_pool)
    return tr, va, va2


def test_clip_net_accuracy_and_fvd_digits():
    (tr_x, tr_y), (va_x, va_y), (va2_x, _) = _moving_clips()
    net, info = train_clip_classifier(tr_x, tr_y, epochs=4, seed=0, val=(va_x, va_y))
    print(f"clip net: {info}")
    assert info["val_accuracy"] > 0.75
    acc = _accuracy("digit_clip_accuracy", net, va_x, va_y, info=info)
    assert acc.name == "digit_clip_accuracy" and acc.value == pytest.approx(info["val_accuracy"])

    real = _frechet("fvd_digits", net, va2_x, va_x, info=info)
    shuffled = _frechet("fvd_digits", net, va2_x[:, np.random.default_rng(0).permutation(16)], va_x)
    frozen = _frechet("fvd_digits", net, np.repeat(va2_x[:, :1], 16, axis=1), va_x)
    noise = _frechet("fvd_digits", net, np.random.default_rng(1).integers(0, 256, va2_x.shape, dtype=np.uint8), va_x)
    print(f"fvd_digits real {real.value:.2f} frozen {frozen.value:.2f} "
          f"shuffled {shuffled.value:.2f} noise {noise.value:.2f}")
    assert real.name == "fvd_digits" and real.protocol["feature_net"]["name"] == "digits_clip_cnn3d"
    # sees motion, not only digit shape: frozen and frame-shuffled clips are far from real ones
    assert real.value < 0.3 * frozen.value
    assert real.value < 0.05 * shuffled.value and real.value < 0.05 * noise.value


# ----------------------------------------------------------------------------- frame prediction

def test_frame_prediction_error():
    rng = np.random.default_rng(0)
    target = rng.integers(20, 200, size=(4, 16, 8, 8), dtype=np.uint8)
    def frame_prediction_error(pred, target, cond_frames):
        return {r.name: r for r in frame_pred_metric(lambda frames: cond_frames).over(chunks_of(pred, None, target))}
    same = frame_prediction_error(target, target, cond_frames=5)
    assert same["frame_pred_mse"].value == 0.0 and same["frame_pred_psnr"].value == pytest.approx(100.0)
    pred = target.copy()
    pred[:, 5:] += 10                                  # every predicted pixel off by 10 levels
    pred[:, :5] = 0                                    # given frames are not scored
    res = frame_prediction_error(pred, target, cond_frames=5)
    assert res["frame_pred_mse"].value == pytest.approx((10 / 255) ** 2)
    assert res["frame_pred_psnr"].value == pytest.approx(20 * np.log10(255 / 10))
    assert res["frame_pred_psnr"].protocol["predicted_frames"] == 11
    assert set(res["frame_pred_psnr"].extra) == {f"t{t:02d}" for t in range(5, 16)}
    with pytest.raises(ValueError):
        frame_prediction_error(pred, target[:, :8], 5)


def test_streamed_fid_and_is_equal_the_direct_numbers_and_pickle_to_workers(tmp_path, monkeypatch):
    """The evaluation's FID / IS: per-chunk sums where the samples are (here after a
    cloudpickle round trip, as Ray ships them to workers, which load the TorchScript file
    by path), added up on the driver, equal the distance and the score computed directly from
    the module's features and probabilities of all the samples at once."""
    import cloudpickle

    from pipelines.config import run_config_from_dict
    from nestgen.evaluation import EvalData, build_quality_suite
    from nestgen.metrics.sums import Chunk, add
    path = tmp_path / "inception-2015-12-05.pt"
    monkeypatch.setenv("NESTGEN_INCEPTION_SHA256", _stand_in_inception(path))
    net = load_feature_net(INCEPTION, str(path), "cpu")
    save_stats(str(tmp_path / "ref.npz"), inception_stats(net, _random_images(300, 0)))
    cfg = run_config_from_dict({"evaluate": {"metrics": ["fid", "is"], "feature_net": str(path),
                                             "reference_stats": str(tmp_path / "ref.npz")}})
    tokens = torch.zeros(4, 64, dtype=torch.long)
    data = EvalData("image", tokens, torch.zeros(4, dtype=torch.long), lambda: (tokens, tokens[:, 0]),
                    ["cat", "dog"], "two pets")
    suite = build_quality_suite(cfg, cfg.evaluate, data, render=None)
    features = cloudpickle.loads(cloudpickle.dumps(suite.features()))
    fake = _random_images(200, 1, offset=40)
    total = {}
    for a, z in [(0, 13), (13, 90), (90, 200)]:
        chunk = Chunk(fake[a:z], np.zeros(z - a, dtype=np.int64), None, np.arange(a, z), 200)
        for name, fn in features.items():
            total[name] = add(total.get(name), fn(chunk, torch.device("cpu")))
    got = suite.finish(total, fake.shape[1:])
    with torch.no_grad():
        m = torch.jit.load(str(path))
        x = torch.from_numpy(fake).permute(0, 3, 1, 2).contiguous()
        f, probs = m(x, return_features=True).double().numpy(), m(x, no_output_bias=True).double().numpy()
    scores = [np.exp((p * (np.log(p) - np.log(p.mean(0, keepdims=True)))).sum(1).mean())
              for p in np.array_split(probs, 10)]
    # The chunks run the float32 net on other batch shapes than the direct call, so BLAS may
    # round differently (4.7e-9 relative was seen between two machines); a lost or repeated
    # chunk moves these numbers by percents.
    assert got["fid"] == pytest.approx(frechet_distance_stats(feature_stats(f), load_stats(str(tmp_path / "ref.npz"))),
                                       rel=1e-5)
    assert got["inception_score"] == pytest.approx(np.mean(scores), rel=1e-5)
    assert suite.protocols["fid"]["num_samples"] == 200 and suite.protocols["fid"]["input_resolutions"] == [[12, 12]]
    assert suite.protocols["fid"]["reference"]["source"].endswith("ref.npz")
    assert suite.protocols["inception_score"]["num_splits"] == 10


def test_every_frechet_distance_records_its_reference_alike():
    """FID, FVD and the digits distances share one record: a reference of another dimension is
    refused, the reference's ddof is recorded, and a covariance ddof that differs from the
    samples' is noted (FVD and the digits distances left both out), as is a reference with
    fewer samples than dimensions."""
    from types import SimpleNamespace

    from nestgen.metrics.digits_metrics import frechet_result as digits_result
    from nestgen.metrics.fid import fid_result
    from nestgen.metrics.frechet import feature_stats
    from nestgen.metrics.fvd import fvd_result
    rng = np.random.default_rng(0)
    gen = feature_stats(rng.normal(size=(40, 6)), ddof=1)
    ref = feature_stats(rng.normal(size=(50, 6)), ddof=0)
    net = SimpleNamespace(record=lambda: {"file": "stand-in"}, spec=SimpleNamespace(conventions={}),
                          kind="digits_image_cnn", config={"size": 32})
    seen = {"num_samples": 40, "input_resolutions": [[8, 8]]}
    results = [fid_result(net, gen, seen, ref), fvd_result(net, gen, {"clip_shapes_thw": [[16, 8, 8]]}, ref),
               digits_result("fd_digits", net, gen, ref, "stats", None, record={"file": "digits"})]
    for res in results:
        assert res.value == pytest.approx(frechet_distance_stats(gen, ref), rel=1e-12), res.name
        assert res.protocol["reference"]["ddof"] == 0 and res.protocol["covariance_ddof"] == 1, res.name
        assert res.protocol["notes"] == ["reference covariance ddof=0 differs from samples' ddof=1"], res.name
    few = feature_stats(rng.normal(size=(4, 6)), ddof=1)
    for res in (fvd_result(net, gen, {"clip_shapes_thw": [[16, 8, 8]]}, few),
                digits_result("fd_digits", net, gen, few, "stats", None, record={"file": "digits"})):
        assert any("only 4 samples for 6-d features" in n for n in res.protocol["notes"]), res.protocol
    with pytest.raises(ValueError, match="reference stats are 5-d but the network gives 6-d"):
        digits_result("fd_digits", net, gen, feature_stats(rng.normal(size=(50, 5))), "stats", None, record={"file": "digits"})
