"""A small deterministic OpenAI-compatible server for the tests (127.0.0.1, a free port).

Answers are computed from the prompt: the explainer names the token that carries the highest
activation in the records ('the token "X"'); the simulator predicts 10 on every token equal to the
quoted one and 0 elsewhere, as JSON, with logprobs on request (p = 0.8 for its answer, 0.2 for the
other end of the scale); detection calls a context present when it contains the quoted token,
fuzzing calls a marking correct when every marked token is the quoted one. `faults` is a list of scripted misbehaviours consumed one per request:
'429', '500', 'slow' (sleeps past the client's timeout), 'garbage' (no JSON), 'range' (numbers out
of 0–10). `requests` counts what arrived; `keys` the Authorization headers seen."""

from __future__ import annotations

import http.server
import json
import math
import re
import threading
import time

MODEL = "featureflow-test-model"


class FakeLLM:
    def __init__(self, api_key: str = "sk-test-key", slow_seconds: float = 3.0, logprobs: bool = True, simulate=None,
                 count=None):
        self.api_key, self.slow_seconds, self.logprobs = api_key, slow_seconds, logprobs
        # simulate(tokens, quoted token) -> 0-10 per token: a simulator other than the perfect one (a test's wrong one)
        self.simulate = simulate
        # count(text) -> tokens: how the server counts prompt tokens in its usage (a real tokenizer in the cost test;
        # by default 4 characters a token)
        self.count = count
        self.faults: list[str] = []
        self.requests = 0
        self.keys: list[str] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                if self.headers.get("Authorization") != f"Bearer {owner.api_key}":
                    return self._send(401, {"error": {"message": "bad key", "type": "invalid_request_error"}})
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "tests"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with owner.lock:
                    owner.requests += 1
                    owner.keys.append(self.headers.get("Authorization", ""))
                    fault = owner.faults.pop(0) if owner.faults else None
                if self.headers.get("Authorization") != f"Bearer {owner.api_key}":
                    return self._send(401, {"error": {"message": "bad key", "type": "invalid_request_error"}})
                if fault == "429":
                    return self._send(429, {"error": {"message": "rate limited", "type": "rate_limit"}})
                if fault == "500":
                    return self._send(500, {"error": {"message": "boom", "type": "server_error"}})
                if fault == "slow":
                    time.sleep(owner.slow_seconds)
                self._send(200, owner.answer(body, fault))

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> "FakeLLM":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, body: dict, fault: str | None) -> dict:
        prompt = "\n".join(m["content"] for m in body["messages"])
        logprobs = None
        if "Explanation of neuron 1 behavior: the main thing this neuron does is find" in prompt and "unknown" not in prompt:
            best, best_v = "", -1
            for line in prompt.splitlines():
                parts = line.rsplit("\t", 1)
                if len(parts) == 2 and parts[1].isdigit() and int(parts[1]) > best_v:
                    best, best_v = parts[0], int(parts[1])
            text = f' the token "{best}".'
        elif '{"present"' in prompt or '{"correct"' in prompt:  # detection / fuzzing: judge from the quoted token
            quoted = re.search(r'the token "(.*?)"', prompt)
            target = quoted.group(1) if quoted else None
            contexts = [line.split(". ", 1)[1] for line in prompt.split("Contexts:\n", 1)[1].splitlines() if ". " in line]
            if '{"present"' in prompt:
                text = json.dumps({"present": [int(target is not None and target in c) for c in contexts]})
            else:
                marked = [re.findall(r"<<(.*?)>>", c) for c in contexts]
                text = json.dumps({"correct": [int(bool(m) and all(t == target for t in m)) for m in marked]})
            if fault == "garbage":
                text = "no idea"
        else:
            quoted = re.search(r'the token "(.*?)"', prompt)
            target = quoted.group(1) if quoted else None
            tokens = [line.rsplit("\t", 1)[0] for line in prompt.splitlines() if line.endswith("\tunknown")]
            values = self.simulate(tokens, target) if self.simulate else [10 if t == target else 0 for t in tokens]
            if fault == "range":
                values = [v + 20 for v in values]
            text = json.dumps({"activations": values})
            if fault == "garbage":
                text = "I would rather not say."
            elif body.get("logprobs") and self.logprobs:
                logprobs = {"content": self._logprobs(values)}
        prompt_tokens = (sum(self.count(m["content"]) + 4 for m in body["messages"]) + 2) if self.count else len(prompt) // 4
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": max(1, len(text) // 4)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                             "logprobs": logprobs}],
                "usage": usage}

    @staticmethod
    def _logprobs(values: list[int]) -> list[dict]:
        """Tokens of '{"activations": [v, v, ...]}' with alternatives for each number."""
        def tok(t: str, alts=None) -> dict:
            return {"token": t, "logprob": math.log(0.8) if alts else 0.0, "bytes": None, "top_logprobs": alts or []}

        out = [tok('{"'), tok("activations"), tok('":'), tok(" ["), ]
        for i, v in enumerate(values):
            other = 0 if v else 10
            out.append(tok(str(v), [{"token": str(v), "logprob": math.log(0.8), "bytes": None},
                                    {"token": str(other), "logprob": math.log(0.2), "bytes": None}]))
            if i < len(values) - 1:
                out.append(tok(","))
        out.append(tok("]}"))
        return out


def main() -> int:
    """Serve until Ctrl-C: `python tests/llm_server.py [--port 8000] [--key sk-test-key]` prints the base URL to put
    in a lineage's `autointerp:` section (model: featureflow-test-model); bench/autointerp_micro.py starts it itself."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=0, help="0: any free port")
    ap.add_argument("--key", default="sk-test-key", help="the API key it accepts (Authorization: Bearer ...)")
    args = ap.parse_args()
    server = FakeLLM(api_key=args.key)
    if args.port:
        server.server.server_close()
        server.server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), server.server.RequestHandlerClass)
        server.thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    with server:
        print(f"{server.base_url} model {MODEL}, key {args.key}; Ctrl-C stops it", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print(f"served {server.requests} requests")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
