#!/usr/bin/env python3
"""A scripted fake of the OpenAI Chat Completions API, enough for Aider.

Serves `POST /v1/chat/completions` (streaming SSE, and plain JSON without
`stream`) and `GET /v1/models`, on 127.0.0.1 (HTTPS with --cert/--key); the
`/v1` prefix is optional. Point Aider at it with `--openai-api-base
http://127.0.0.1:PORT/v1` (or OPENAI_API_BASE) and `--model openai/<name>`.

The script:
- a request whose system prompt asks for a commit message (Aider's
  auto-commit asks its weak model for one) is answered with
  --commit-message;
- any other request is the agent's turn: the answer is --file with --text in
  Aider's `whole` edit format (the file name on its own line, then a fenced
  block with the whole content), so run Aider with `--edit-format whole`;
  Aider writes the file and commits it itself.
Every request is recorded in --log (see fake_model_common.py); the summary
names the model, whether it streamed and which answer it got.
"""

import os
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fake_model_common as fm  # noqa: E402


def text_of(content):
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(c.get("text", "") for c in content if isinstance(c, dict))
    return ""


class App:
    def __init__(self, args):
        self.args = args

    def plan(self, body):
        messages = body.get("messages") or []
        system = "\n".join(text_of(m.get("content")) for m in messages
                           if isinstance(m, dict) and m.get("role") == "system")
        if "commit message" in system:
            return "commit_message", self.args.commit_message
        a = self.args
        body_text = a.text if a.text.endswith("\n") else a.text + "\n"
        return "edit", f"{a.file}\n```\n{body_text}```\n"

    def route(self, req):
        method, path, body = req["method"], req["path"], req["json"] or {}
        path = path[len("/v1"):] if path.startswith("/v1/") else path
        if method == "POST" and path == "/chat/completions":
            step, text = self.plan(body)
            summary = {
                "kind": "chat",
                "model": body.get("model"),
                "stream": bool(body.get("stream")),
                "messages": len(body.get("messages") or []),
                "step": step,
            }
            model = body.get("model") or self.args.model
            usage = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
            cid = fm.next_id("chatcmpl-")
            if body.get("stream"):
                return fm.Reply(200, events=self.stream(cid, model, text, body, usage)), summary
            return fm.Reply(200, {
                "id": cid, "object": "chat.completion", "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}],
                "usage": usage,
            }), summary
        if method == "GET" and path == "/models":
            m = {"id": self.args.model, "object": "model", "created": 1735689600,
                 "owned_by": "fake"}
            return fm.Reply(200, {"object": "list", "data": [m]}), {"kind": "models"}
        err = {"error": {"message": f"fake server: no route {method} {req['path']}",
                         "type": "invalid_request_error", "code": "not_found"}}
        return fm.Reply(404, err), {"kind": "unknown"}

    def stream(self, cid, model, text, body, usage):
        created = int(time.time())

        def chunk(delta, finish=None):
            return fm.sse_event(None, {
                "id": cid, "object": "chat.completion.chunk", "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

        out = [chunk({"role": "assistant", "content": ""})]
        # A few pieces, as a real stream would send them.
        step = max(1, len(text) // 3)
        for i in range(0, len(text), step):
            out.append(chunk({"content": text[i:i + step]}))
        out.append(chunk({}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            out.append(fm.sse_event(None, {
                "id": cid, "object": "chat.completion.chunk", "created": created,
                "model": model, "choices": [], "usage": usage}))
        out.append(fm.sse_event(None, "[DONE]"))
        return out


def main():
    args = fm.arg_parser(__doc__.splitlines()[0]).parse_args()
    return fm.serve(App(args), args)


if __name__ == "__main__":
    sys.exit(main())
