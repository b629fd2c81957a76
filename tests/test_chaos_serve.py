"""Serving under a node death on a local multi-node Ray cluster (conftest's chaos_cluster;
scenario in chaoskit.serve_faults): two replicas on the two 2-CPU worker nodes under steady
load from nestgen's own client, one node SIGKILLed, then started again. Serve's proxy answers
the requests that were in flight on the dead replica with a bare 500 and retries none of them
(it retries only the choice of a replica); the client sends those again."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytestmark = pytest.mark.timeout(600)


@pytest.mark.cluster
def test_a_replica_node_dying_under_load_fails_no_request(cluster, tmp_path):
    from chaoskit.serve_faults import serve_scenario
    row = serve_scenario(cluster, tmp_path, clients=3, settle=10)
    assert row["replica_nodes"] == ["w1", "w2"]                     # one replica per node
    assert row["max_latency_s"] < row["request_timeout_s"]          # nothing hung
    assert row["failed"] == 0, row["failed_how"]                    # the requests in flight were sent again
    assert row["retried"] <= 3 and row["retried_after_recovery"] == 0   # only those the dead replica held
    assert row["answered_after_recovery"] >= 10
    assert row["replicas_after"] == 2 and row["same_sample_as_before"]


class _Service(BaseHTTPRequestHandler):
    """Answers each POST with the next of `answers` (status, content type, body)."""
    answers: list = []

    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        status, ctype, body = self.answers.pop(0)
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def service():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Service)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Service.answers
    server.shutdown()
    server.server_close()


DIED = (500, "text/plain; charset=utf-8", b"Internal Server Error")     # Serve's proxy: the replica died
OK = (200, "application/json", json.dumps({"samples": [[1, 2]]}).encode())


def test_the_client_sends_a_request_again_when_its_replica_died(service):
    from pipelines.serve import client
    url, answers = service
    answers[:] = [DIED, DIED, OK]
    assert client.generate(url, {"class_label": 1, "seed": 3})["samples"] == [[1, 2]]
    assert answers == []


def test_the_client_reports_its_own_500s_and_a_replica_that_keeps_dying(service):
    from pipelines.serve import client
    url, answers = service
    answers[:] = [(500, "application/json", b'{"detail": "decoding failed"}'), OK]
    with pytest.raises(client.ServiceError, match="decoding failed"):     # nestgen's own 500: not sent again
        client.generate(url, {"class_label": 1})
    answers[:] = [DIED] * (client.RETRIES + 1) + [OK]
    with pytest.raises(client.ServiceError, match="HTTP 500: Internal Server Error"):
        client.generate(url, {"class_label": 1})
    assert answers == [OK]
