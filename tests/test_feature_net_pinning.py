"""Feature-network files are TorchScript, i.e. code: one is loaded only with the sha256 it must
have, from the bytes that were hashed, and a worker verifies what it loads."""
import hashlib

import pytest

from nestgen.metrics import feature_nets
from nestgen.metrics.feature_nets import I3D, INCEPTION, FeatureNetUntrusted, load_feature_net

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*:DeprecationWarning")    # the files are TorchScript


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    """No hash from the environment and no network loaded earlier: each test is a fresh process."""
    monkeypatch.setattr(feature_nets, "_LOADED", {})
    for spec in (INCEPTION, I3D):
        monkeypatch.delenv(spec.sha256_env_var, raising=False)
        monkeypatch.delenv(spec.env_var, raising=False)


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_file_with_its_hash_given_loads(fake_i3d_file, monkeypatch):
    net = load_feature_net(I3D, str(fake_i3d_file), "cpu", sha256=_sha256(fake_i3d_file))
    assert net.sha256 == _sha256(fake_i3d_file) and net.record()["sha256_full"] == net.sha256
    monkeypatch.setenv("NESTGEN_I3D_PATH", str(fake_i3d_file))           # the hash from the environment
    monkeypatch.setenv("NESTGEN_I3D_SHA256", _sha256(fake_i3d_file).upper())
    assert load_feature_net(I3D, device="cpu").sha256 == net.sha256


def test_a_file_without_a_hash_is_refused(fake_i3d_file):
    with pytest.raises(FeatureNetUntrusted,
                       match=r"network .*i3d_torchscript.pt .* without its sha256.*Set \$NESTGEN_I3D_SHA256") as e:
        load_feature_net(I3D, str(fake_i3d_file), "cpu")
    assert "\n" not in str(e.value)


def test_a_file_with_a_wrong_hash_is_refused_naming_both_hashes(fake_i3d_file, monkeypatch):
    actual, wrong = _sha256(fake_i3d_file), "0" * 64
    with pytest.raises(FeatureNetUntrusted) as e:
        load_feature_net(I3D, str(fake_i3d_file), "cpu", sha256=wrong)
    msg = str(e.value)
    assert f"sha256 is {actual}, expected {wrong}" in msg and f"NESTGEN_I3D_SHA256={actual}" in msg
    monkeypatch.setenv("NESTGEN_I3D_SHA256", wrong)
    with pytest.raises(FeatureNetUntrusted, match="expected 0000"):
        load_feature_net(I3D, str(fake_i3d_file), "cpu")


def test_the_public_files_hashes_are_not_invented():
    """No authoritative sha256 of inception-2015-12-05.pt / i3d_torchscript.pt was found: the
    user gives one (test_a_file_without_a_hash_is_refused). A recorded one must be a sha256."""
    for spec in (INCEPTION, I3D):
        assert spec.published_sha256 == "" or len(spec.published_sha256) == 64
    assert (INCEPTION.sha256_env_var, I3D.sha256_env_var) == ("NESTGEN_INCEPTION_SHA256", "NESTGEN_I3D_SHA256")


def test_the_bytes_hashed_are_the_bytes_loaded(fake_i3d_file, monkeypatch):
    """The file is read once: a file swapped after the hash check cannot be what is loaded."""
    import torch
    good = fake_i3d_file.read_bytes()
    real_load, loaded_from = torch.jit.load, []

    def load(f, **kw):
        loaded_from.append(f)
        return real_load(f, **kw)
    monkeypatch.setattr(torch.jit, "load", load)
    load_feature_net(I3D, str(fake_i3d_file), "cpu", sha256=hashlib.sha256(good).hexdigest())
    assert len(loaded_from) == 1 and not isinstance(loaded_from[0], (str, bytes)) and loaded_from[0].getvalue() == good


def test_a_worker_verifies_the_file_it_loads(fake_i3d_file, monkeypatch):
    """The driver checked the file; a worker (a fresh process: nothing cached) loading the same
    path after it was replaced refuses it, whatever hash the environment gives."""
    net = load_feature_net(I3D, str(fake_i3d_file), "cpu", sha256=_sha256(fake_i3d_file))
    on_worker = feature_nets.on_worker(net)
    monkeypatch.setattr(feature_nets, "_LOADED", {})
    assert on_worker("cpu").sha256 == net.sha256                            # the same file: loads
    monkeypatch.setattr(feature_nets, "_LOADED", {})
    fake_i3d_file.write_bytes(fake_i3d_file.read_bytes() + b"\0")           # replaced on shared storage
    monkeypatch.setenv("NESTGEN_I3D_SHA256", _sha256(fake_i3d_file))        # even "trusted" by the worker's env
    with pytest.raises(FeatureNetUntrusted, match=f"expected {net.sha256}"):
        on_worker("cpu")
