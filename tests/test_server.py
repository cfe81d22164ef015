"""rnnlm serve's JSON API over HTTP: a real uvicorn server on a free port of 127.0.0.1."""

import http.client
import json
import socket
import threading
import time

import pytest

pytest.importorskip("starlette", reason="rnnlm serve needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("uvicorn", reason="rnnlm serve needs the serve extra: pip install -e '.[serve]'")

from conftest import cli_line, small_text, untrained_lm  # noqa: E402
from rnnlm import server  # noqa: E402
from rnnlm.errors import RnnlmError  # noqa: E402


@pytest.fixture(scope="module")
def served():
    """(port, session) of a server of an untrained char LSTM, running in a thread."""
    lm = untrained_lm("char")
    sock = server.listen("127.0.0.1", 0)
    srv = server.make_server(lm, sock)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started
    yield sock.getsockname()[1], srv.config.app.state.session
    srv.should_exit = True
    thread.join(10)


def request(port, method, path, body=None, raw=None):
    """(status, parsed JSON or the text of an event stream) of one request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    if resp.getheader("Content-Type", "").startswith("text/event-stream"):
        return resp.status, text
    return resp.status, json.loads(text)


def events(stream: str) -> list[tuple[str, dict]]:
    out = []
    for block in stream.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((lines.get("event", "message"), json.loads(lines["data"])))
    return out


def test_info_and_page(served):
    port, session = served
    status, info = request(port, "GET", "/api/info")
    assert status == 200
    assert (info["cell"], info["layers"], info["hidden_size"], info["kinds"]) == ("lstm", 1, 16, ["h", "c"])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for path in ("/", "/static/app.js", "/static/style.css"):
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read(), path
    conn.close()


def test_generate_streams_the_continuation(served):
    port, session = served
    status, stream = request(port, "POST", "/api/generate",
                             {"prompt": "The army", "max_new_tokens": 30, "seed": 3, "temperature": 1.0})
    assert status == 200
    got = events(stream)
    assert got[-1][0] == "done"
    pieces = [data["text"] for event, data in got if event == "message"]
    assert len(pieces) > 1  # sent piece by piece, not at the end
    assert "".join(pieces) == session.lm.generate("The army", max_new_tokens=30, seed=3, temperature=1.0,
                                                  top_k=0, top_p=1.0)


def test_next_words_and_activations(served):
    port, session = served
    status, data = request(port, "POST", "/api/next-words", {"prompt": "Napoleon was", "k": 4})
    assert status == 200
    expected = session.lm.next_words("Napoleon was", 4, beam=16)
    assert [(w["word"], w["p"]) for w in data["words"]] == [(w, pytest.approx(p)) for w, p in expected]

    text = 'He said “yes” (twice).\nThen he left.'
    status, data = request(port, "POST", "/api/activations", {"text": text, "layer": 0, "kind": "c", "unit": 7})
    assert status == 200
    assert data["text"] == text and len(data["values"]) == len(text)
    assert (data["layer"], data["kind"], data["unit"]) == (0, "c", 7)
    assert max(abs(v) for v in data["values"]) == pytest.approx(data["scale"], abs=1e-4)
    assert set(data["ranked"]) == {"quote", "line_position", "after_newline", "parentheses"}
    assert len(data["ranked"]["quote"]) == 5


def test_a_pasted_passage_may_be_as_long_as_a_validation_window(served):
    port, _ = served
    text = "abc " * 3_000  # 12,000 characters: over the prompt limit, within the passage limit
    status, data = request(port, "POST", "/api/activations", {"text": text})
    assert status == 200 and len(data["values"]) == len(text)


def test_activations_of_a_validation_window(served, tmp_path):
    port, session = served
    path = tmp_path / "corpus.txt"
    path.write_text(small_text(), encoding="utf-8")
    session.lm.config.data.path, session._valid = str(path), None
    status, data = request(port, "POST", "/api/activations", {"source": "validation", "chars": 200, "seed": 1})
    assert status == 200 and len(data["text"]) == 200 and data["text"] in small_text()
    session.lm.config.data.path, session._valid = str(tmp_path / "gone.txt"), None
    status, data = request(port, "POST", "/api/activations", {"source": "validation"})
    assert status == 400 and "validation text is not available" in data["error"]


BAD = [
    ("/api/generate", {"prompt": ""}, "prompt is empty"),
    ("/api/generate", {}, "prompt is empty"),
    ("/api/generate", {"prompt": "x" * 10_001}, "at most 10000"),
    ("/api/generate", {"prompt": "a", "temperature": -1}, "temperature must be >= 0"),
    ("/api/generate", {"prompt": "a", "top_p": 1.5}, "top_p must be in (0, 1]"),
    ("/api/generate", {"prompt": "a", "max_new_tokens": 0}, "max_new_tokens must be from 1"),
    ("/api/generate", {"prompt": "a", "top_k": "five"}, "top_k must be an integer"),
    ("/api/generate", {"prompt": "a", "seed": 1.5}, "seed must be an integer"),
    ("/api/generate", {"prompt": "a", "tempature": 1}, "unknown field 'tempature'"),
    ("/api/next-words", {"prompt": "a", "k": 0}, "k must be from 1"),
    ("/api/next-words", {"prompt": 5}, "prompt must be a string"),
    ("/api/activations", {"text": "abc", "layer": 1}, "layer must be an integer from 0 to 0"),
    ("/api/activations", {"text": "abc", "unit": 16}, "unit must be an integer from 0 to 15"),
    ("/api/activations", {"text": "abc", "kind": "q"}, "unknown state 'q'"),
    ("/api/activations", {"text": "abc", "source": "web"}, "source must be"),
    ("/api/activations", {"text": ""}, "text is empty"),
    ("/api/activations", {"text": "x" * 20_001}, "at most 20000"),
]


@pytest.mark.parametrize("path,body,words", BAD)
def test_bad_requests_are_400_with_one_line(served, path, body, words):
    port, _ = served
    status, data = request(port, "POST", path, body)
    assert status == 400 and words in data["error"] and "\n" not in data["error"], data
    assert request(port, "GET", "/api/info")[0] == 200  # still up


@pytest.mark.parametrize("raw,words", [(b'{"prompt": "a", "temperature": NaN}', "finite"),
                                       (b'{"prompt": "a", "top_p": Infinity}', "finite"),
                                       (b'{"prompt": ', "not valid JSON"), (b"[1, 2]", "JSON object"),
                                       (b"\xff\xfe", "not valid JSON")])
def test_malformed_bodies_are_400(served, raw, words):
    port, _ = served
    status, data = request(port, "POST", "/api/generate", raw=raw)
    assert status == 400 and words in data["error"], data


HOSTILE = [
    b"[" * 100_000 + b"]" * 100_000,  # valid JSON, nested deeper than Python's parser recurses
    b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"prompt": "a", "temperature": ' + b"9" * 400 + b"}",  # an integer past float's range
    b'{"prompt": "a", "kind": "\\ud83d"}',  # a lone surrogate in an error message
    b'{"\\ud83d": 1}',  # ... in a field's name
]


@pytest.mark.parametrize("path", ["/api/generate", "/api/next-words", "/api/activations"])
@pytest.mark.parametrize("raw", HOSTILE, ids=["deep", "deep-field", "huge-number", "surrogate-value", "surrogate-key"])
def test_hostile_json_is_a_4xx_with_one_line(served, path, raw):
    port, _ = served
    status, data = request(port, "POST", path, raw=raw)
    assert status == 400 and "\n" not in data["error"] and len(data["error"]) < 300, data


CUT_EMOJI = "He laughed \ud83d"  # what a page sends when a text is cut in the middle of an emoji


def test_a_lone_surrogate_in_a_text_is_read_as_a_replacement_character(served):
    port, session = served
    status, stream = request(port, "POST", "/api/generate", {"prompt": CUT_EMOJI, "max_new_tokens": 5, "seed": 1})
    assert status == 200 and events(stream)[-1][0] == "done"
    status, data = request(port, "POST", "/api/next-words", {"prompt": CUT_EMOJI, "k": 3})
    assert status == 200 and data["prompt"] == "He laughed \ufffd" and len(data["words"]) == 3
    status, data = request(port, "POST", "/api/activations", {"text": CUT_EMOJI})
    assert status == 200 and data["text"] == "He laughed \ufffd" and len(data["values"]) == len(CUT_EMOJI)


def test_a_body_over_the_limit_is_refused_before_it_is_read(served):
    port, _ = served
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("POST", "/api/generate")
    conn.putheader("Content-Length", str(10**12))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and "at most" in json.loads(resp.read())["error"]
    conn.close()


@pytest.mark.parametrize("setting", [{"temperature": 1e-300}, {"top_p": 1e-300}, {"temperature": 1e-300, "top_p": 1e-300}])
def test_tiny_sampling_settings_are_greedy(served, setting):
    port, session = served
    status, stream = request(port, "POST", "/api/generate", {"prompt": "The army", "max_new_tokens": 20, **setting})
    assert status == 200 and events(stream)[-1][0] == "done", stream
    text = "".join(d["text"] for e, d in events(stream) if e == "message")
    assert text == session.lm.generate("The army", max_new_tokens=20, temperature=0)


def test_unknown_paths_and_methods(served):
    port, _ = served
    assert request(port, "GET", "/api/nothing")[0] == 404
    status, data = request(port, "GET", "/api/generate")
    assert status == 405 and "Method Not Allowed" in data["error"]


def test_two_clients_at_once_both_get_their_answers(served):
    port, session = served
    results = {}

    def client(name, path, body):
        results[name] = request(port, "POST", path, body)

    threads = [threading.Thread(target=client, args=(f"gen{i}", "/api/generate",
                                                     {"prompt": "The army", "max_new_tokens": 200, "seed": i}))
               for i in range(2)]
    threads.append(threading.Thread(target=client, args=("next", "/api/next-words", {"prompt": "The army"})))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i in range(2):
        status, stream = results[f"gen{i}"]
        assert status == 200 and events(stream)[-1][0] == "done"
        text = "".join(d["text"] for e, d in events(stream) if e == "message")
        assert text == session.lm.generate("The army", max_new_tokens=200, seed=i, temperature=0.8, top_k=0, top_p=1.0)
    assert results["next"][0] == 200 and results["next"][1]["words"]


def test_a_client_that_goes_away_stops_its_generation(served):
    port, session = served
    before = dict(session.generations)
    with session.lock:  # the model is busy: the request waits while its client leaves
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/api/generate", body=json.dumps({"prompt": "The army", "max_new_tokens": 2000}),
                     headers={"Content-Type": "application/json"})
        assert conn.getresponse().status == 200
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        time.sleep(1.5)  # the stream notices within half a second
    deadline = time.time() + 10
    while session.generations["stopped"] == before["stopped"] and time.time() < deadline:
        time.sleep(0.05)
    assert session.generations["stopped"] == before["stopped"] + 1
    assert session.generations["finished"] == before["finished"]


def test_serve_cli_errors_are_one_line(capsys, tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    line = cli_line(capsys, ["serve", "--checkpoint", str(tmp_path / "missing.pt"), "--port", str(port)])
    assert "missing.pt" in line
    line = cli_line(capsys, ["serve", "--checkpoint", "x.pt", "--port", "70000"])
    assert "--port must be from 0 to 65535" in line
    with pytest.raises(RnnlmError) as e:
        server.listen("127.0.0.1", port)
    assert "choose another --port" in str(e.value) and "\n" not in str(e.value)
    taken.close()
