"""A stand-in for an OpenAI-compatible judge server (vLLM's, llama.cpp's, a hosted API), for tests: real HTTP on
loopback speaking the chat-completions protocol (``POST /v1/chat/completions``), whose verdicts follow a
documented rule instead of a model's judgement. It reads the two answers out of the judge prompt's
``[The Start of Assistant A's Answer]`` ... blocks (tunegate's default prompt, MT-Bench's).

Rules (``mode``):

- ``longer``: ``[[A]]`` when assistant A's answer is longer, ``[[B]]`` when B's is, ``[[C]]`` when equal. It does
  not depend on the order, so both orders agree.
- ``first``: always ``[[A]]``, a judge with pure position bias: the two orders of every pair disagree.
- ``garbage_then_longer:N``: the first N answers to each prompt carry no verdict, then ``longer``.
- ``garbage``: never a verdict.
- ``error:CODE``: every request is answered with HTTP status CODE.
- ``sleep:S``: wait S seconds, then ``longer`` (a timeout for a client that waits less).

``requests`` counts the requests, ``prompts`` the prompts received.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER = re.compile(r"\[The Start of Assistant ([AB])'s Answer\]\n(.*?)\n\[The End of Assistant \1's Answer\]", re.S)


class JudgeServer:
    def __init__(self, mode: str = "longer") -> None:
        self.mode = mode
        self.requests = 0
        self.prompts: list[str] = []
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                status, content = server.answer(self.path, body)
                payload = json.dumps(content).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> JudgeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def verdict_by_length(self, prompt: str) -> str:
        answers = dict(ANSWER.findall(prompt))
        a, b = len(answers.get("A", "")), len(answers.get("B", ""))
        return "A" if a > b else "B" if b > a else "C"

    def answer(self, path: str, body: dict) -> tuple[int, dict]:
        if path.rstrip("/") != "/v1/chat/completions":
            return 404, {"error": f"no route {path}"}
        prompt = body["messages"][-1]["content"]
        with self._lock:
            self.requests += 1
            self.prompts.append(prompt)
            self._seen[prompt] += 1
            seen = self._seen[prompt]
        mode, _, argument = self.mode.partition(":")
        if mode == "error":
            return int(argument), {"error": "injected"}
        if mode == "sleep":
            time.sleep(float(argument))
        if mode == "garbage" or (mode == "garbage_then_longer" and seen <= int(argument)):
            text = "Both answers have merits; I cannot decide."
        elif mode == "first":
            text = "Assistant A is better. [[A]]"
        else:
            text = f"Judged by length. [[{self.verdict_by_length(prompt)}]]"
        return 200, {"id": "stand-in", "object": "chat.completion", "model": body.get("model"),
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
