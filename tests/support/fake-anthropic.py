#!/usr/bin/env python3
"""A scripted fake of the Anthropic Messages API, enough for Claude Code.

Serves `POST /v1/messages` (streaming SSE and plain JSON), `POST
/v1/messages/count_tokens` and `GET /v1/models`, on 127.0.0.1 (HTTPS with
--cert/--key). Point Claude Code at it with ANTHROPIC_BASE_URL.

The script, for a request that offers tools (the agent's turn):
  1. no tool result yet: a `Write` tool call creating --file with --text
     (a `Bash` call doing the same when the request offers no Write tool);
  2. one tool result: a `Bash` tool call that commits the file;
  3. two or more: a final text answer, ending the turn.
A request without tools (Claude Code's side queries, such as a title for
the session) gets a short text answer. Every request is recorded in --log
(see fake_model_common.py); the summary names the model, whether it
streamed, the tools offered and the step answered.
"""

import json
import os
import re
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fake_model_common as fm  # noqa: E402


def tool_results(messages):
    n = 0
    for m in messages or []:
        content = m.get("content")
        if m.get("role") == "user" and isinstance(content, list):
            n += sum(1 for c in content if isinstance(c, dict) and c.get("type") == "tool_result")
    return n


def system_text(body):
    system = body.get("system")
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        return "\n".join(b.get("text", "") for b in system if isinstance(b, dict))
    return ""


def working_dir(body):
    """Claude Code names the working directory in its system prompt."""
    m = re.search(r"(?:Primary working directory|Working directory):\s*(\S+)", system_text(body))
    if m:
        return m.group(1)
    for msg in body.get("messages") or []:
        content = msg.get("content")
        texts = [content] if isinstance(content, str) else [
            c.get("text", "") for c in content or [] if isinstance(c, dict)
        ]
        for t in texts:
            m = re.search(r"(?:Primary working directory|Working directory):\s*(\S+)", t or "")
            if m:
                return m.group(1)
    return None


class App:
    def __init__(self, args):
        self.args = args

    def plan(self, body):
        """(step, content blocks, stop_reason) for one /v1/messages body."""
        a = self.args
        tools = fm.tool_names(body.get("tools"))
        if "Bash" not in tools:
            return "side", [{"type": "text", "text": "Agent note"}], "end_turn"
        done = tool_results(body.get("messages"))
        cwd = working_dir(body)
        if done == 0:
            if "Write" in tools and cwd:
                path = os.path.join(cwd, a.file)
                call = {"name": "Write", "input": {"file_path": path, "content": a.text}}
            else:
                call = {"name": "Bash", "input": {"command": fm.write_command(a),
                                                  "description": "Write the note"}}
            return "write", [{"type": "tool_use", "id": fm.next_id("toolu_"), **call}], "tool_use"
        if done == 1:
            call = {"name": "Bash", "input": {"command": fm.commit_command(a),
                                              "description": "Commit the note"}}
            return "commit", [{"type": "tool_use", "id": fm.next_id("toolu_"), **call}], "tool_use"
        text = f"Wrote {a.file} and committed it: {a.commit_message}."
        return "final", [{"type": "text", "text": text}], "end_turn"

    def route(self, req):
        method, path, body = req["method"], req["path"], req["json"] or {}
        if method == "POST" and path.endswith("/v1/messages/count_tokens"):
            return fm.Reply(200, {"input_tokens": 100}), {"kind": "count_tokens"}
        if method == "POST" and path.endswith("/v1/messages"):
            step, blocks, stop = self.plan(body)
            summary = {
                "kind": "messages",
                "model": body.get("model"),
                "stream": bool(body.get("stream")),
                "tools": fm.tool_names(body.get("tools")),
                "messages": len(body.get("messages") or []),
                "step": step,
            }
            model = body.get("model") or self.args.model
            if body.get("stream"):
                return fm.Reply(200, events=self.stream(model, blocks, stop)), summary
            return fm.Reply(200, self.message(model, blocks, stop)), summary
        if method in ("GET", "HEAD") and path == "/api/hello":
            # Claude Code's connectivity check (HEAD); answer as the real one.
            return fm.Reply(200, {"message": "hello"}), {"kind": "hello"}
        if method == "GET" and path.endswith("/v1/models"):
            m = {"type": "model", "id": self.args.model, "display_name": "Fake model",
                 "created_at": "2025-01-01T00:00:00Z"}
            return fm.Reply(200, {"data": [m], "has_more": False, "first_id": m["id"],
                                  "last_id": m["id"]}), {"kind": "models"}
        err = {"type": "error", "error": {"type": "not_found_error",
                                          "message": f"fake server: no route {method} {path}"}}
        return fm.Reply(404, err), {"kind": "unknown"}

    def message(self, model, blocks, stop):
        return {
            "id": fm.next_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": blocks,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": 100, "output_tokens": 20},
        }

    def stream(self, model, blocks, stop):
        start = self.message(model, [], None)
        start["usage"] = {"input_tokens": 100, "output_tokens": 1,
                          "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        ev = [fm.sse_event("message_start", {"type": "message_start", "message": start})]
        for i, b in enumerate(blocks):
            if b["type"] == "text":
                first = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": b["text"]}]
            else:
                first = {"type": "tool_use", "id": b["id"], "name": b["name"], "input": {}}
                js = json.dumps(b["input"])
                half = len(js) // 2
                deltas = [{"type": "input_json_delta", "partial_json": js[:half]},
                          {"type": "input_json_delta", "partial_json": js[half:]}]
            ev.append(fm.sse_event("content_block_start", {
                "type": "content_block_start", "index": i, "content_block": first}))
            for d in deltas:
                ev.append(fm.sse_event("content_block_delta", {
                    "type": "content_block_delta", "index": i, "delta": d}))
            ev.append(fm.sse_event("content_block_stop", {"type": "content_block_stop", "index": i}))
        ev.append(fm.sse_event("message_delta", {
            "type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": 20}}))
        ev.append(fm.sse_event("message_stop", {"type": "message_stop"}))
        return ev


def main():
    args = fm.arg_parser(__doc__.splitlines()[0]).parse_args()
    return fm.serve(App(args), args)


if __name__ == "__main__":
    sys.exit(main())
