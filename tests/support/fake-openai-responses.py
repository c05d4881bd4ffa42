#!/usr/bin/env python3
"""A scripted fake of the OpenAI Responses API, enough for the Codex CLI.

Serves `POST /v1/responses` (streaming SSE, and plain JSON without
`stream`) and `GET /v1/models`, on 127.0.0.1 (HTTPS with --cert/--key); the
`/v1` prefix is optional. Point Codex at it with a model provider whose
`base_url` is `http://127.0.0.1:PORT/v1` (see examples/agents/codex). A
WebSocket upgrade (Codex tries one first for OpenAI's own provider) is
answered `426` and recorded, so a test can see it was attempted.

The script, counted by the tool outputs already in the request's `input`:
  0: write --file (an `apply_patch` call when the request offers that tool,
     else a shell call writing it);
  1: a shell call committing it;
  2+: a final assistant message.
The shell call uses whichever shell tool the request offers, in this order:
`exec_command` {cmd}, `shell_command` {command}, `shell` {command: [argv]}.
Tools are looked for at the top level and inside `additional_tools` input
items (their namespaces included). Every request is recorded in --log (see
fake_model_common.py); the summary names the model, the tools and the step.
"""

import json
import os
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fake_model_common as fm  # noqa: E402

OUTPUT_TYPES = ("function_call_output", "custom_tool_call_output")


def all_tools(body):
    """Every tool offered: (name, type), namespaces flattened."""
    found = []

    def walk(tools):
        for t in tools or []:
            if not isinstance(t, dict):
                continue
            if t.get("type") == "namespace":
                walk(t.get("tools"))
            elif t.get("name"):
                found.append((t["name"], t.get("type")))

    walk(body.get("tools"))
    for item in body.get("input") or []:
        if isinstance(item, dict) and item.get("type") == "additional_tools":
            walk(item.get("tools"))
    return found


def outputs_so_far(body):
    return sum(1 for i in body.get("input") or []
               if isinstance(i, dict) and i.get("type") in OUTPUT_TYPES)


class App:
    def __init__(self, args):
        self.args = args

    def shell_call(self, tools, command):
        names = dict(tools)
        if "exec_command" in names:
            return self.function_call("exec_command", {"cmd": command})
        if "shell_command" in names:
            return self.function_call("shell_command", {"command": command})
        if "shell" in names:
            return self.function_call("shell", {"command": ["bash", "-lc", command]})
        return None

    def function_call(self, name, arguments):
        return {"type": "function_call", "id": fm.next_id("fc_"), "call_id": fm.next_id("call_"),
                "name": name, "arguments": json.dumps(arguments), "status": "completed"}

    def plan(self, body):
        a = self.args
        tools = all_tools(body)
        names = dict(tools)
        done = outputs_so_far(body)
        if done == 0:
            if names.get("apply_patch") == "custom":
                lines = "".join("+" + line + "\n" for line in a.text.rstrip("\n").split("\n"))
                patch = f"*** Begin Patch\n*** Add File: {a.file}\n{lines}*** End Patch\n"
                item = {"type": "custom_tool_call", "id": fm.next_id("ctc_"),
                        "call_id": fm.next_id("call_"), "name": "apply_patch", "input": patch,
                        "status": "completed"}
                return "write", item
            item = self.shell_call(tools, fm.write_command(a))
            if item:
                return "write", item
        elif done == 1:
            item = self.shell_call(tools, fm.commit_command(a))
            if item:
                return "commit", item
        text = f"Wrote {a.file} and committed it: {a.commit_message}."
        if done == 0:
            text = "No shell tool was offered; nothing done."
        msg = {"type": "message", "id": fm.next_id("msg_"), "status": "completed",
               "role": "assistant",
               "content": [{"type": "output_text", "text": text, "annotations": []}]}
        return "final", msg

    def route(self, req):
        method, path, body = req["method"], req["path"], req["json"] or {}
        path = path[len("/v1"):] if path.startswith("/v1/") else path
        if req["headers"].get("upgrade", "").lower() == "websocket":
            return fm.Reply(426, {"error": {"message": "fake server: no WebSocket, use HTTP",
                                            "type": "invalid_request_error"}}), {"kind": "websocket"}
        if method == "POST" and path == "/responses":
            step, item = self.plan(body)
            summary = {
                "kind": "responses",
                "model": body.get("model"),
                "stream": bool(body.get("stream")),
                "tools": [n for n, _ in all_tools(body)],
                "outputs": outputs_so_far(body),
                "step": step,
            }
            model = body.get("model") or self.args.model
            if body.get("stream"):
                return fm.Reply(200, events=self.stream(model, item)), summary
            return fm.Reply(200, self.response(model, [item], "completed")), summary
        if method == "GET" and path == "/models":
            m = {"id": self.args.model, "object": "model", "created": 1735689600,
                 "owned_by": "fake"}
            return fm.Reply(200, {"object": "list", "data": [m]}), {"kind": "models"}
        err = {"error": {"message": f"fake server: no route {method} {req['path']}",
                         "type": "invalid_request_error", "code": "not_found"}}
        return fm.Reply(404, err), {"kind": "unknown"}

    def response(self, model, output, status, rid=None):
        return {
            "id": rid or fm.next_id("resp_"),
            "object": "response",
            "created_at": int(time.time()),
            "status": status,
            "model": model,
            "output": output,
            "usage": {"input_tokens": 100, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": 20, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": 120},
        }

    def stream(self, model, item):
        rid = fm.next_id("resp_")
        seq = iter(range(1 << 30))

        def ev(kind, **fields):
            return fm.sse_event(kind, {"type": kind, "sequence_number": next(seq), **fields})

        created = self.response(model, [], "in_progress", rid)
        created["usage"] = None
        out = [ev("response.created", response=created),
               ev("response.in_progress", response=created)]
        added = dict(item)
        if item["type"] == "message":
            added["content"] = []
            added["status"] = "in_progress"
        out.append(ev("response.output_item.added", output_index=0, item=added))
        if item["type"] == "message":
            text = item["content"][0]["text"]
            part = {"type": "output_text", "text": "", "annotations": []}
            out.append(ev("response.content_part.added", item_id=item["id"], output_index=0,
                          content_index=0, part=part))
            out.append(ev("response.output_text.delta", item_id=item["id"], output_index=0,
                          content_index=0, delta=text))
            out.append(ev("response.output_text.done", item_id=item["id"], output_index=0,
                          content_index=0, text=text))
            out.append(ev("response.content_part.done", item_id=item["id"], output_index=0,
                          content_index=0, part=item["content"][0]))
        out.append(ev("response.output_item.done", output_index=0, item=item))
        out.append(ev("response.completed", response=self.response(model, [item], "completed", rid)))
        return out


def main():
    args = fm.arg_parser(__doc__.splitlines()[0]).parse_args()
    return fm.serve(App(args), args)


if __name__ == "__main__":
    sys.exit(main())
