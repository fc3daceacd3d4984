#!/usr/bin/env python3
"""A small MCP stdio server for the lmsfs tests, well or badly behaved.

    hostile.py MODE [PIDFILE]

MODE
    good        answers initialize, tools/list (one tool, "shout") and
                tools/call properly
    garbage     prints a line that is not JSON instead of answering
                initialize
    silent      never answers anything
    old         answers initialize with protocol version 2023-01-01
    crash       good, but exits in the middle of tools/call
    hang        good, but never answers tools/call, nor a ping after it
    badnames    good, plus tools whose names cannot be function names
    env         good; "shout" answers with the environment and the open
                file descriptors instead
    changing    good; after the first tools/call it announces
                notifications/tools/list_changed and lists a second tool,
                "whisper"
    paged       good, but tools/list comes in two pages (nextCursor);
                the second has "whisper"
    asking      good, and after notifications/initialized it sends two
                requests of its own (ping, roots/list) and logs the answers
    parallel    good, but each tools/call is answered from a thread of its
                own after arguments.delay seconds (answers out of order);
                "shout" with arguments.size answers that many bytes
    stubborn    good, but ignores SIGTERM and the end of its input (only
                SIGKILL stops it)

In every mode, a tools/call with arguments.busy first sleeps that many
seconds without reading its input (a single-threaded server at work), and
one with arguments.flood first prints that many bytes of one line that is
not JSON.

With PIDFILE, writes its PID there (appending a line per start).
Logs to stderr ("hostile: ...") as a server would.
"""

import json
import os
import signal
import sys
import threading
import time

LOCK = threading.Lock()


def send(obj):
    with LOCK:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def answer_later(mid, args):
    time.sleep(float(args.get("delay", 0)))
    text = "x" * int(args["size"]) if "size" in args else \
        args.get("text", "").upper()
    send({"jsonrpc": "2.0", "id": mid, "result": {
        "content": [{"type": "text", "text": text}]}})
    sys.stderr.write("hostile: answered request %s late\n" % mid)
    sys.stderr.flush()


def main():
    mode = sys.argv[1]
    if len(sys.argv) > 2:
        with open(sys.argv[2], "a") as f:
            f.write("%d\n" % os.getpid())
    sys.stderr.write("hostile: started in mode %s\n" % mode)
    sys.stderr.flush()
    hung = False
    changed = False
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for line in sys.stdin:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        method, mid = msg.get("method"), msg.get("id")
        if mode == "silent":
            continue
        if method == "notifications/cancelled":
            sys.stderr.write("hostile: cancelled request %s (%s)\n" % (
                msg["params"]["requestId"], msg["params"].get("reason")))
            sys.stderr.flush()
            continue
        if method is None and mid in ("srv-1", "srv-2"):
            sys.stderr.write("hostile: answer to %s: %s\n" % (
                mid, json.dumps(msg.get("result", msg.get("error")))))
            sys.stderr.flush()
            continue
        if method == "notifications/initialized" and mode == "asking":
            send({"jsonrpc": "2.0", "id": "srv-1", "method": "ping"})
            send({"jsonrpc": "2.0", "id": "srv-2", "method": "roots/list"})
            continue
        if method == "initialize":
            if mode == "garbage":
                sys.stdout.write("Starting server... <html>not json\n")
                sys.stdout.flush()
                continue
            version = "2023-01-01" if mode == "old" else \
                msg["params"]["protocolVersion"]
            send({"jsonrpc": "2.0", "id": mid, "result": {
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": True}},
                "serverInfo": {"name": "hostile", "version": "1"}}})
        elif method == "tools/list":
            tools = [{"name": "shout", "description": "Upper-cases text",
                      "inputSchema": {"type": "object", "properties": {
                          "text": {"type": "string"}},
                          "required": ["text"]}}]
            if mode == "paged":
                if (msg.get("params") or {}).get("cursor") == "page2":
                    tools = [{"name": "whisper", "inputSchema": {
                        "type": "object", "properties": {}}}]
                    send({"jsonrpc": "2.0", "id": mid,
                          "result": {"tools": tools}})
                else:
                    send({"jsonrpc": "2.0", "id": mid, "result": {
                        "tools": tools, "nextCursor": "page2"}})
                continue
            if changed:
                tools.append({"name": "whisper", "inputSchema": {
                    "type": "object", "properties": {}}})
            if mode == "badnames":
                tools += [{"name": "has.dot", "inputSchema": {}},
                          {"name": "x" * 70, "inputSchema": {}}]
            send({"jsonrpc": "2.0", "id": mid, "result": {"tools": tools}})
        elif method == "tools/call":
            if mode == "crash":
                sys.stderr.write("hostile: crashing mid-call\n")
                sys.stderr.flush()
                os._exit(3)
            if mode == "hang":
                hung = True
                continue
            if mode == "parallel":
                threading.Thread(target=answer_later, daemon=True, args=(
                    mid, msg["params"]["arguments"])).start()
                continue
            time.sleep(float(msg["params"]["arguments"].get("busy", 0)))
            flood = int(msg["params"]["arguments"].get("flood", 0))
            while flood > 0:
                chunk = min(flood, 1 << 20)
                sys.stdout.write("x" * chunk)
                flood -= chunk
            if msg["params"]["arguments"].get("flood"):
                sys.stdout.write("\n")
            if mode == "env":
                fds = sorted(int(x) for x in os.listdir("/proc/self/fd"))
                text = json.dumps({"env": dict(os.environ), "fds": fds})
            else:
                text = msg["params"]["arguments"].get("text", "").upper()
            send({"jsonrpc": "2.0", "id": mid, "result": {
                "content": [{"type": "text", "text": text}]}})
            if mode == "changing" and not changed:
                changed = True
                send({"jsonrpc": "2.0",
                      "method": "notifications/tools/list_changed"})
        elif method == "ping":
            if not hung:
                send({"jsonrpc": "2.0", "id": mid, "result": {}})
        elif mid is not None:
            send({"jsonrpc": "2.0", "id": mid,
                  "error": {"code": -32601, "message": "no such method"}})
    if mode == "stubborn":
        while True:
            time.sleep(1000)


if __name__ == "__main__":
    main()
