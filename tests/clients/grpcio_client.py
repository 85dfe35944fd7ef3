#!/usr/bin/env python3
"""cri-grpcio-client: grpc C-core (Python grpcio) driving a CRI socket for criguard's tests.

The same line protocol as tests/clients/go/main.go: one JSON request a line on standard input,
one JSON answer a line on standard output, messages as raw protobuf bytes in base64, so that
C-core's own transport, authority and reconnect behaviour do the work.

    --socket PATH      dialled as the target unix:PATH, C-core's default authority for it
    --authority NAME   grpc.default_authority instead

Ops: call, stream, load, sleep (see the Go client).
"""

import argparse
import base64
import json
import sys
import threading
import time

import grpc

MAX_MESSAGE = 16 << 20


def status_of(error):
    return error.code().value[0], error.details() or ""


def call(channel, req, body):
    method = channel.unary_unary(req["method"])
    timeout = req.get("timeout_ms", 0) / 1000 or None
    metadata = list((req.get("metadata") or {}).items())
    start = time.monotonic()
    try:
        response = method(body, timeout=timeout, metadata=metadata)
        answer = {"code": 0, "message": "", "response": base64.b64encode(response).decode()}
    except grpc.RpcError as error:
        code, message = status_of(error)
        answer = {"code": code, "message": message}
    answer["ms"] = (time.monotonic() - start) * 1000
    return answer


def stream(channel, req, body):
    method = channel.unary_stream(req["method"])
    timeout = req.get("timeout_ms", 0) / 1000 or None
    responses = []
    answer = {"code": 0, "message": ""}
    call_ = method(body, timeout=timeout)
    try:
        for message in call_:
            responses.append(base64.b64encode(message).decode())
            if len(responses) >= req.get("count", 0):
                break
    except grpc.RpcError as error:
        answer["code"], answer["message"] = status_of(error)
    finally:
        call_.cancel()
    answer["responses"] = responses
    return answer


def load(channel, req, body):
    deadline = time.monotonic() + req["duration_ms"] / 1000
    lock = threading.Lock()
    answer = {"ok": 0, "failed": 0, "errors": {}, "max_ms": 0.0}

    def caller():
        while time.monotonic() < deadline:
            result = call(channel, req, body)
            with lock:
                if result["code"] == 0:
                    answer["ok"] += 1
                else:
                    answer["failed"] += 1
                    key = "%d: %s" % (result["code"], result["message"])
                    answer["errors"][key] = answer["errors"].get(key, 0) + 1
                answer["max_ms"] = max(answer["max_ms"], result["ms"])

    threads = [threading.Thread(target=caller) for _ in range(req["callers"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--authority")
    args = parser.parse_args()
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
    ]
    if args.authority:
        options.append(("grpc.default_authority", args.authority))
    channel = grpc.insecure_channel("unix:" + args.socket, options=options)
    ops = {"call": call, "stream": stream, "load": load}
    for line in sys.stdin:
        req = json.loads(line)
        body = base64.b64decode(req.get("request", ""))
        if req["op"] == "sleep":
            time.sleep(req["duration_ms"] / 1000)
            answer = {}
        else:
            answer = ops[req["op"]](channel, req, body)
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
