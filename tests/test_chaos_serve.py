"""Serving under a node death on a local multi-node Ray cluster (conftest's chaos_cluster;
scenario in chaoskit.serve_faults): two replicas on the two 2-CPU worker nodes under steady
load from nestgen's own client, one node SIGKILLed, then started again. Serve's proxy retries
none of the requests that were in flight on the dead replica (it retries only the choice of a
replica); nestgen's proxy middleware answers them 503 with Retry-After (Serve alone: a bare
500), and the client sends them again."""
import asyncio
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
    assert set(row["retried_statuses"]) <= {503}, row["retried_statuses"]  # the proxy's middleware, not a bare 500
    assert row["answered_after_recovery"] >= 10
    assert row["replicas_after"] == 2 and row["same_sample_as_before"]


class _Service(BaseHTTPRequestHandler):
    """Answers each POST with the next of `answers` (status, content type, body)."""
    answers: list = []
    protocol_version = "HTTP/1.1"        # chunked answers

    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        status, ctype, body, *headers = self.answers.pop(0)
        self.send_response(status)
        cut = ("x-cut", "1") in headers         # one chunk, then closed without the last chunk
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("content-type", ctype)
        self.send_header(*(("transfer-encoding", "chunked") if cut else ("content-length", str(len(body)))))
        self.end_headers()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(body), body) if cut else body)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def service():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Service)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Service.answers
    server.shutdown()
    server.server_close()


DIED = (500, "text/plain; charset=utf-8", b"Internal Server Error")     # Serve's proxy alone: the replica died
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


def test_the_client_sends_a_request_again_after_the_proxy_middlewares_503(service):
    from pipelines.serve import client
    from pipelines.serve.middleware import REPLICA_LOST
    url, answers = service
    lost = (503, "application/json", json.dumps({"detail": REPLICA_LOST}).encode(), ("retry-after", "0"))
    answers[:] = [lost, OK]
    assert client.generate(url, {"class_label": 1, "seed": 3})["samples"] == [[1, 2]]
    full = (503, "application/json", json.dumps({"detail": "this replica's queue is full"}).encode(),
            ("retry-after", "0"))
    answers[:] = [full, OK]                              # an overloaded service's 503: the caller decides
    with pytest.raises(client.ServiceError, match="queue is full"):
        client.generate(url, {"class_label": 1})


def _asgi(app, scope_type="http", disconnect=False):
    """Run ASGI `app` on one request; the messages it sent."""
    sent = []

    async def receive():
        return {"type": "http.disconnect"} if disconnect else {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)
    asyncio.run(app({"type": scope_type, "path": "/v1/generate", "headers": []}, receive, send))
    return sent


def test_the_proxy_middleware_answers_503_only_for_a_request_the_proxy_left_unanswered():
    from pipelines.serve.middleware import REPLICA_LOST, LostReplicaAs503, proxy_middlewares

    async def replica_died(scope, receive, send):        # what Serve's proxy does then: no answer at all
        await receive()

    async def answered(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
    start, body = _asgi(LostReplicaAs503(replica_died))
    assert start["status"] == 503 and (b"retry-after", b"1") in start["headers"]
    assert json.loads(body["body"]) == {"detail": REPLICA_LOST}
    assert [m.get("status") for m in _asgi(LostReplicaAs503(answered))] == [200, None]     # left as it was
    assert _asgi(LostReplicaAs503(replica_died), disconnect=True) == []        # the client went away: nothing
    assert _asgi(LostReplicaAs503(replica_died), scope_type="lifespan") == []  # not HTTP: not its business
    [mw] = proxy_middlewares()
    assert mw.cls is LostReplicaAs503


def _stream(*events, cut: bool = False):
    """An NDJSON answer of `events`; cut: chunked, its last line cut short, and the connection
    closes before the last chunk (as when the replica's node died mid-answer)."""
    body = b"".join(json.dumps(e).encode() + b"\n" for e in events) + (b'{"event": "res' if cut else b"")
    return (200, "application/x-ndjson", body, *([("x-cut", "1")] if cut else []))


def test_a_stream_cut_before_its_result_is_sent_again(service):
    from pipelines.serve import client
    url, answers = service
    step = {"event": "step", "step": 1, "steps": 2}
    result = {"event": "result", "result": {"samples": [[1, 2]]}}
    answers[:] = [_stream(step), _stream(step, cut=True), _stream(step, result)]
    seen = []
    assert client.generate_stream(url, {"class_label": 1, "seed": 3}, seen.append)["samples"] == [[1, 2]]
    assert answers == [] and len(seen) == 3               # the steps start over with each resend
    answers[:] = [_stream(step)] * (client.RETRIES + 1) + [_stream(step, result)]
    with pytest.raises(client.ServiceError, match="ended before its result event 3 times"):
        client.generate_stream(url, {"class_label": 1}, seen.append)
    assert len(answers) == 1


@pytest.mark.parametrize("line", [b"not json", b"[1, 2]", b'{"no": "event"}'])
def test_a_stream_line_that_is_no_event_is_a_clear_error_not_a_crash(service, line):
    from pipelines.serve import client
    url, answers = service
    answers[:] = [(200, "application/x-ndjson", line + b"\n")]
    with pytest.raises(client.ServiceError, match="not an event"):
        client.generate_stream(url, {"class_label": 1}, lambda e: None)
