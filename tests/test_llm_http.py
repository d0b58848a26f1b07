"""The OpenAI-compatible LOVE client against real local servers: answers, retries with backoff, no
redirects (an API key never reaches another host), a total deadline per request, a response size cap,
and an unreachable server, each a one-line error."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from selfseg_fast.evaluation.datasets.cityscapes import CITYSCAPES_CLASSES
from selfseg_fast.evaluation.llm import LLMError, OpenAIChatLM, build_mapper
from selfseg_fast.evaluation.love import LOVE, LoveCache, Vocabulary


def cs_vocab() -> Vocabulary:
    return Vocabulary("cityscapes", list(CITYSCAPES_CLASSES))


def _answer(content: str) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()


class Handler(BaseHTTPRequestHandler):
    """Behaviour chosen per server (`self.server.behaviour`); every request is recorded."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 - http.server API
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        server.calls.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        behaviour = server.behaviour
        if behaviour == "flaky" and len(server.calls) <= 2:
            return self._send(503, b"busy", {"Retry-After": "0"})
        if behaviour == "down":
            return self._send(503, b"busy", {"Retry-After": "0"})
        if behaviour == "redirect":
            return self._send(307, b"", {"Location": server.redirect_to})
        if behaviour == "trickle":
            return self._trickle()
        if behaviour == "huge":
            return self._send(200, b"x" * (3 << 20), {"Content-Type": "application/json"})
        if behaviour == "huge-chunked":
            return self._chunked(b"y" * 65536, 64)
        prompt = body["messages"][0]["content"]
        noun = re.search(r"If (.+?) is not similar", prompt).group(1)
        content = {
            "sedan": "I'm happy to help! The term 'sedan' is most similar to 'car'.",
            "lorry": "'truck'",
        }
        return self._send(200, _answer(content.get(noun, "'fruit'")), {"Content-Type": "application/json"})

    def _send(self, status: int, data: bytes, headers: dict) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _trickle(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        try:
            for _ in range(40):  # one byte every 0.25 s: each read is fast, the whole answer is not
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.25)
        except OSError:
            pass

    def _chunked(self, chunk: bytes, count: int) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for _ in range(count):
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass

    def log_message(self, *args):
        pass


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that gives up mid-answer (deadline, size cap) is expected here


def start_server(behaviour: str = "ok"):
    server = QuietServer(("127.0.0.1", 0), Handler)
    server.behaviour, server.calls, server.redirect_to = behaviour, [], ""
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def servers():
    started = []

    def make(behaviour="ok"):
        server, url = start_server(behaviour)
        started.append(server)
        return server, url

    yield make
    for server in started:
        server.shutdown()
        server.server_close()


def test_answers_concurrently_and_cached(servers, tmp_path):
    server, url = servers()
    mapper = build_mapper(None, url, batch_size=4, model="test-model")
    love = LOVE(mapper, cs_vocab(), LoveCache(tmp_path / "c.json"))
    assert love.map(["sedan", "lorry", "banana", "car"]) == {
        "sedan": "car", "lorry": "truck", "banana": "background", "car": "car"
    }  # fmt: skip
    assert len(server.calls) == 3  # "car" is a class name: no LLM call
    call = server.calls[0]
    assert call["path"] == "/v1/chat/completions"
    assert call["body"]["model"] == "test-model" and call["body"]["temperature"] == 0
    assert call["body"]["max_tokens"] == 512
    again = LOVE(build_mapper("url", url, model="test-model"), cs_vocab(), LoveCache(tmp_path / "c.json"))
    assert again.map(["sedan"]) == {"sedan": "car"} and len(server.calls) == 3


def test_server_errors_are_retried_with_backoff(servers):
    server, url = servers("flaky")  # 503 twice, then answers
    llm = OpenAIChatLM(url, retries=3, backoff_s=0.01)
    assert llm.complete(["If sedan is not similar"]) == [
        "I'm happy to help! The term 'sedan' is most similar to 'car'."
    ]
    assert len(server.calls) == 3


def test_persistent_server_errors_give_one_line(servers):
    server, url = servers("down")
    llm = OpenAIChatLM(url, retries=2, backoff_s=0.01)
    with pytest.raises(LLMError) as info:
        llm.complete(["If sedan is not similar"])
    assert "HTTP 503" in str(info.value) and "3 attempts" in str(info.value) and "\n" not in str(info.value)
    assert len(server.calls) == 3


def test_redirect_is_not_followed_and_the_key_stays_home(servers):
    other, other_url = servers()  # a different host name for the same machine: another origin
    redirector, url = servers("redirect")
    redirector.redirect_to = other_url.replace("127.0.0.1", "localhost") + "/v1/chat/completions"
    llm = OpenAIChatLM(url, api_key="sk-SECRET-123", retries=0)
    with pytest.raises(LLMError, match="redirects to"):
        llm.complete(["If sedan is not similar"])
    assert redirector.calls[0]["auth"] == "Bearer sk-SECRET-123"
    assert other.calls == []  # nothing, and so no key, went to the other address


def test_timeout_is_a_total_deadline_not_per_read(servers):
    _, url = servers("trickle")  # would take 10 s, every single read under 0.3 s
    llm = OpenAIChatLM(url, timeout_s=1.0, retries=0)
    start = time.perf_counter()
    with pytest.raises(LLMError, match="within 1 s"):
        llm.complete(["If sedan is not similar"])
    assert time.perf_counter() - start < 3.0


@pytest.mark.parametrize("behaviour", ["huge", "huge-chunked"])
def test_response_size_is_capped(servers, behaviour):
    _, url = servers(behaviour)
    llm = OpenAIChatLM(url, retries=0, max_response_bytes=1 << 20)
    with pytest.raises(LLMError, match="byte cap"):
        llm.complete(["If sedan is not similar"])


def test_unreachable_is_one_line():
    llm = OpenAIChatLM("http://127.0.0.1:9", timeout_s=2, retries=1, backoff_s=0.01)  # nothing listens
    with pytest.raises(LLMError) as info:
        llm.complete(["x"])
    assert "cannot reach" in str(info.value) and "\n" not in str(info.value)


def test_works_inside_a_running_event_loop(servers):
    import asyncio

    _, url = servers()
    llm = OpenAIChatLM(url, retries=0)

    async def caller():
        return llm.complete(["If lorry is not similar"])

    assert asyncio.run(caller()) == ["'truck'"]
