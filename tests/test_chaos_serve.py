"""Serving under a node death on a local multi-node Ray cluster (chaoskit.cluster; scenario in
chaoskit.serve_faults): two replicas on two worker nodes under steady load, one node
SIGKILLed, then started again.

Runs last in the session (conftest orders `cluster` tests last) and shuts the session's
in-process Ray down first: two Ray clusters do not fit this 2-core machine."""
import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import ray
    if ray.is_initialized():
        ray.shutdown()
    from chaoskit.cluster import LocalCluster
    with LocalCluster(tmp_path_factory.mktemp("chaos-serve"), head_cpus=0, workers=(2, 2)) as c:
        ray.init(address=c.address)
        try:
            yield c
        finally:
            ray.shutdown()


def test_a_replica_node_dying_under_load_loses_only_its_requests_in_flight(cluster, tmp_path):
    from chaoskit.serve_faults import serve_scenario
    row = serve_scenario(cluster, tmp_path, clients=3, settle=10)
    assert row["replica_nodes"] == ["w1", "w2"]                     # one replica per node
    assert row["max_latency_s"] < row["request_timeout_s"]          # nothing hung
    assert row["failed"] == row["failed_in_flight_at_kill"] <= 3    # only the requests the dead replica held
    assert row["failed_after_recovery"] == 0 and row["answered_after_recovery"] >= 10
    assert row["replicas_after"] == 2 and row["same_sample_as_before"]
