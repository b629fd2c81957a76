"""The HTTP API's OpenAPI description (no Ray: the FastAPI app describes itself): every
endpoint's 200 answer is a typed object, and each error it can answer is documented with its body."""
import json

from pipelines.serve import api

EXPECTED_ERRORS = {("post", "/v1/generate"): {400, 401, 408, 413, 422, 500, 503},
                   ("get", "/v1/schedules"): {401, 503}, ("get", "/v1/model"): {401, 503},
                   ("get", "/v1/health"): {503}}


def _schema(spec: dict, content: dict) -> dict:
    schema = next(iter(content.values()))["schema"]
    ref = schema.get("$ref")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[-1]] if ref else schema


def test_every_endpoint_documents_its_answer_and_errors_with_bodies():
    spec = api.openapi()
    routes = {(method, path): op for path, ops in spec["paths"].items() for method, op in ops.items()}
    assert set(routes) == set(EXPECTED_ERRORS)
    for route, op in routes.items():
        answers = op["responses"]
        ok = _schema(spec, answers["200"]["content"])
        assert ok["type"] == "object" and ok["properties"] and ok.get("required"), route
        assert {int(c) for c in answers if c != "200"} == EXPECTED_ERRORS[route], route
        for code in EXPECTED_ERRORS[route]:
            answer = answers[str(code)]
            assert answer["description"] and answer["content"], (route, code)
            content = dict(answer["content"])
            if code in (408, 503):      # Serve's proxy answers these in plain text
                assert content.pop("text/plain")
                if not content:
                    continue
                # generate's 503 also comes from the replica's own queue cap (serve.batching step), as JSON
                assert (route, code) == (("post", "/v1/generate"), 503)
            body = _schema(spec, content)
            assert "detail" in body["properties"], (route, code)
    detail = spec["components"]["schemas"]["ValidationErrorResponse"]["properties"]["detail"]
    field_error = spec["components"]["schemas"][detail["items"]["$ref"].rsplit("/", 1)[-1]]
    assert set(field_error["properties"]) == {"loc", "msg", "type"}



def test_generate_documents_its_streamed_answer():
    """`"stream": true` is a boolean of the request, and its NDJSON events are the 200's second
    content type, each line's schema inline (no references that could dangle)."""
    spec = api.openapi()
    stream = spec["components"]["schemas"]["GenerateRequest"]["properties"]["stream"]
    assert stream["type"] == "boolean" and stream["default"] is False and "application/x-ndjson" in stream["description"]
    content = spec["paths"]["/v1/generate"]["post"]["responses"]["200"]["content"]
    assert list(content) == ["application/json", "application/x-ndjson"]
    event = content["application/x-ndjson"]["schema"]
    assert event["properties"]["event"]["enum"] == ["step", "result", "error"] and event["required"] == ["event"]
    assert "$ref" not in json.dumps(event) and "$defs" not in event
