"""Submitting to a Kubeflow Pipelines cluster, against a stand-in of its REST API on 127.0.0.1.

No Kubeflow API server runs here, so a small HTTP server records what the real kfp.Client sends
and replies the way the v2beta1 API does. The tests check those requests exactly.
"""

import http.server
import json
import threading
import urllib.parse

import pytest

from pipelines import cli

EXPERIMENT_ID = "6f1c0d2e-experiment"
RUN_ID = "9a8b7c6d-run"
IMAGE = "registry.example.com/team/flower-classifier:1.2.3"


class _KfpApiStandIn(http.server.BaseHTTPRequestHandler):
    requests: list[dict] = []

    def do_GET(self):
        self.requests.append({"method": "GET", "path": self.path})
        if self.path.startswith("/apis/v2beta1/experiments"):
            self._reply({"experiments": [{"experiment_id": EXPERIMENT_ID, "display_name": "flowers-nightly"}]})
        else:
            self._reply({})

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        self.requests.append({"method": "POST", "path": self.path, "body": body})
        self._reply({"run_id": RUN_ID, "experiment_id": EXPERIMENT_ID, "display_name": body.get("display_name")})

    def _reply(self, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def kfp_api():
    _KfpApiStandIn.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _KfpApiStandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", _KfpApiStandIn.requests
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_submit_creates_run_with_arguments(kfp_api):
    host, requests = kfp_api

    run_id = cli.submit_to_cluster(
        host=host,
        arguments={"bucket": "gs://models-bucket/flowers", "epochs": 10, "tune_head": True},
        image=IMAGE,
        experiment="flowers-nightly",
        run_name="nightly-42",
    )

    assert run_id == RUN_ID
    lookups = [request for request in requests if request["path"].startswith("/apis/v2beta1/experiments")]
    assert len(lookups) == 1
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(lookups[0]["path"]).query)
    assert json.loads(query["filter"][0]) == {
        "predicates": [{"operation": 1, "key": "display_name", "stringValue": "flowers-nightly"}]
    }
    posts = [request for request in requests if request["method"] == "POST"]
    assert [post["path"] for post in posts] == ["/apis/v2beta1/runs"]
    body = posts[0]["body"]
    assert body["experiment_id"] == EXPERIMENT_ID
    assert body["display_name"] == "nightly-42"
    assert body["runtime_config"]["parameters"] == {
        "bucket": "gs://models-bucket/flowers", "epochs": 10, "tune_head": True,
    }
    assert body["pipeline_spec"]["pipelineInfo"]["name"] == "flower-classifier"
    images = {executor["container"]["image"] for executor in body["pipeline_spec"]["deploymentSpec"]["executors"].values()}
    assert images == {IMAGE}


def test_submit_rejects_local_bucket_before_request(kfp_api, tmp_path):
    host, requests = kfp_api

    with pytest.raises(SystemExit, match=r"bucket=.* is a local path, which pods on the cluster cannot read or write"):
        cli.submit_to_cluster(host=host, arguments={"bucket": str(tmp_path)}, image=IMAGE, experiment="e")
    assert requests == []


def test_submit_rejects_bad_value_before_request(kfp_api):
    host, requests = kfp_api

    with pytest.raises(ValueError, match=r"invalid quantization 'int4'"):
        cli.submit_to_cluster(
            host=host, arguments={"bucket": "gs://models-bucket/flowers", "quantization": "int4"},
            image=IMAGE, experiment="e",
        )
    assert requests == []
