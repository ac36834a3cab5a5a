"""The dashboard command serves the study: read it back through optuna-dashboard's HTTP API."""

import json
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from hpo.config import ConfigError
from hpo.dashboard import make_dashboard_server

PROJECT_DIR = Path(__file__).resolve().parents[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def test_dashboard_command_serves_trial_values_and_user_attrs(tmp_path, make_study):
    storage = make_study(tmp_path / "fake.db", [({}, 0.61), ({}, None), ({}, 0.57)])
    command = [sys.executable, str(PROJECT_DIR / "main.py"), "dashboard", "--study_name", "fake", "--storage", storage]
    server = subprocess.Popen(
        [*command, "--port", "0"],
        cwd=tmp_path,  # the study's artifacts folder (studies/fake/artifacts) goes there, not into the project
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background job ignores SIGINT, and the child would inherit that: restore Ctrl-C.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        first_line = server.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:(\d+))/dashboard/studies/(\d+)", first_line)
        assert match, f"no URL printed: {first_line!r} {server.stderr.read() if server.poll() is not None else ''}"
        root, study_id = match[1], int(match[3])

        studies = get_json(f"{root}/api/studies")["study_summaries"]
        assert [(s["study_id"], s["study_name"]) for s in studies] == [(study_id, "fake")]
        trials = get_json(f"{root}/api/studies/{study_id}")["trials"]

        assert [(t["number"], t["state"]) for t in trials] == [(0, "Complete"), (1, "Pruned"), (2, "Complete")]
        assert (trials[0]["values"], trials[2]["values"]) == ([0.61], [0.57])
        assert trials[1]["intermediate_values"] == [{"step": 5, "value": pytest.approx(0.41)}]
        attrs = {attr["key"]: attr["value"] for attr in trials[2]["user_attrs"]}
        assert attrs["tokens_per_second"] == "1002.0" and attrs["probe_standard_error"] == "0.012"
        assert {param["name"] for param in trials[0]["params"]} >= {"model.attention_kind", "train.learning_rate"}
    finally:
        server.send_signal(signal.SIGINT)  # what Ctrl-C sends: the command must stop cleanly
        assert server.wait(timeout=30) == 0


def test_port_in_use_is_a_config_error_naming_the_flag(tmp_path, make_study, in_tmp_path):
    storage = make_study(tmp_path / "fake.db", [({}, 0.6)])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"--port {port}: .*pick another --port"):
            make_dashboard_server("fake", storage, "127.0.0.1", port)
