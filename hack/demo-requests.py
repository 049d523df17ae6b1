#!/usr/bin/env python3
"""Sends the demo's streaming chat requests through muster-router and prints, for each one,
where it went and why, from the router's own JSON access log and debug endpoints.

Two kinds of traffic:
  * load: requests that overlap in time, without a session id. Each one after the first is sent
    while the previous one is still streaming, so the least-request scorer sees a busy pod and
    picks the idle one.
  * session: requests carrying the same x-session-id, sent one after another. Session affinity
    (rendezvous hashing on the session id and the pod names) sends all of them to one pod, the
    one /debug/sessions names for that session.

A request that does not stream to [DONE] with HTTP 200 always exits non-zero; with --check (the
smoke test) every other expectation is asserted too, otherwise those are printed as warnings.
Standard library only; every address is checked to be on loopback before it is contacted.
"""

import argparse
import http.client
import ipaddress
import json
import sys
import threading
import time

PD_NOTE = (
    "each request is disaggregated: its prefill leg goes to the prefill pod of one ServingGroup "
    "and its decode leg to the decode pod of the same group (pairs never cross groups)."
)


def loopback(addr):
    host, port = addr.rsplit(":", 1)
    if not ipaddress.ip_address(host).is_loopback:
        sys.exit(f"refusing to contact {addr}: not a loopback address")
    return host, int(port)


def get_json(addr, path):
    host, port = loopback(addr)
    c = http.client.HTTPConnection(host, port, timeout=10)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    c.close()
    if r.status != 200:
        raise RuntimeError(f"GET {path}: HTTP {r.status}: {body[:200]!r}")
    return json.loads(body)


class Stream:
    """One streaming chat completion, read event by event on its own thread."""

    def __init__(self, router, request_id, prompt, max_tokens, session=None):
        self.router, self.request_id, self.prompt = router, request_id, prompt
        self.max_tokens, self.session = max_tokens, session
        self.status = None
        self.text = ""
        self.chunks = 0
        self.done = False  # saw data: [DONE]
        self.error = None
        self.first_token = threading.Event()
        self.finished = threading.Event()

    def start(self):
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self):
        try:
            host, port = loopback(self.router)
            c = http.client.HTTPConnection(host, port, timeout=60)
            headers = {"content-type": "application/json", "x-request-id": self.request_id}
            if self.session:
                headers["x-session-id"] = self.session
            body = {
                "model": "llama",
                "stream": True,
                "max_tokens": self.max_tokens,
                "ignore_eos": True,
                "messages": [{"role": "user", "content": self.prompt}],
            }
            c.request("POST", "/v1/chat/completions", json.dumps(body), headers)
            r = c.getresponse()
            self.status = r.status
            if r.status != 200:
                self.error = r.read().decode(errors="replace")[:300]
                return
            for raw in r:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    self.done = True
                    break
                event = json.loads(data)
                if "error" in event:
                    self.error = json.dumps(event["error"])
                    break
                for choice in event.get("choices", []):
                    piece = (choice.get("delta") or {}).get("content") or ""
                    if piece:
                        self.text += piece
                        self.chunks += 1
                        self.first_token.set()
            c.close()
        except Exception as e:  # reported, and fails the check
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.first_token.set()
            self.finished.set()


def access_lines(path, ids, timeout=10.0):
    """The router's access-log entries for the given request ids (it writes them in batches)."""
    deadline = time.monotonic() + timeout
    found = {}
    while True:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if "muster_router::access" not in line:
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                fields = entry.get("fields", entry)
                if fields.get("request_id") in ids:
                    found[fields["request_id"]] = fields
        if len(found) == len(ids) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--router", required=True)
    p.add_argument("--admin", required=True)
    p.add_argument("--router-log", required=True)
    p.add_argument("--pods", required=True, help="lines: name ip role node group")
    p.add_argument("--namespace", required=True)
    p.add_argument("--requests", type=int, default=6)
    p.add_argument("--check", action="store_true")
    a = p.parse_args()
    if a.requests < 4:
        sys.exit("--requests must be at least 4 (2 load + 2 session requests)")

    pods = {}
    with open(a.pods) as f:
        for line in f:
            name, ip, role, node, group = line.split()
            pods[name] = {"ip": ip, "role": role, "node": node, "group": group}
    server = f"{a.namespace}/llama-2p2d"
    failures = []
    # A request the router failed to serve fails the demo too, not only the smoke test; the
    # routing expectations (spread, stickiness) are warnings outside --check.
    served_failures = []

    def check(ok, what, served=False):
        if not ok:
            (served_failures if served else failures).append(what)

    endpoints = {e["name"]: e for s in get_json(a.admin, "/debug/endpoints") for e in s["endpoints"]}
    print("\nRouter endpoints for ModelServer llama-2p2d (from /debug/endpoints):")
    for name, pod in sorted(pods.items()):
        if name in endpoints:
            e = endpoints[name]
            sample = ", ".join(f"{k}={e[f'engine_{k}']:.3g}" if e[f"engine_{k}"] is not None else f"{k}=?"
                               for k in ("running", "waiting", "kv_cache_usage"))
            print(f"  {name:32} {pod['role']:8} {e['address']:22} endpoint; engine {sample}")
        else:
            print(f"  {name:32} {pod['role']:8} {pod['ip'] + ':…':22} prefill peer of group {pod['group']}")
    check(sorted(endpoints) == sorted(n for n, p in pods.items() if p["role"] == "decode"),
          f"endpoints should be exactly the decode pods, got {sorted(endpoints)}")
    print(f"  note: {PD_NOTE}")

    n_load = a.requests // 2
    n_session = a.requests - n_load
    run = f"{int(time.time()) % 100000:05d}"
    prompts = [
        "Explain gang scheduling in one sentence.",
        "What is a HyperNode?",
        "Why keep prefill and decode in one rack?",
        "What does a KV cache hold?",
        "Name one reason to route by session.",
        "What does Volcano add to Kubernetes?",
    ]

    # Load: each request starts once the previous one streams its first token, so it is
    # certainly still in flight when the next one is routed.
    load, busy_at_send = [], {}
    for i in range(n_load):
        s = Stream(a.router, f"demo-{run}-load-{i + 1}", prompts[i % len(prompts)], 96)
        busy_at_send[s.request_id] = [t for t in load if not t.finished.is_set()]
        s.start().first_token.wait(30)
        load.append(s)
    for s in load:
        s.finished.wait(60)
    # Session: one conversation, turn by turn.
    session_id = f"demo-conversation-{run}"
    sess = []
    for i in range(n_session):
        s = Stream(a.router, f"demo-{run}-session-{i + 1}", prompts[(n_load + i) % len(prompts)], 24,
                   session=session_id).start()
        s.finished.wait(60)
        sess.append(s)

    streams = load + sess
    logs = access_lines(a.router_log, {s.request_id for s in streams})
    preferred = get_json(a.admin, f"/debug/sessions?server={server}&session={session_id}")["preferred_endpoint"]

    print(f"\nRequests (model \"llama\", streamed; routing from the router's access log {a.router_log}):")
    print(f"  {'request':26} {'session':24} {'status':6} {'pod':32} {'attempts':8} {'ttft':>7} {'tokens':>6}  scores")
    def ep(stream):
        return logs.get(stream.request_id, {}).get("endpoint", "?")

    for s in streams:
        line = logs.get(s.request_id, {})
        endpoint = line.get("endpoint", "?")
        ttft = line.get("ttft_us")
        ttft_s = f"{ttft / 1000:.0f}ms" if isinstance(ttft, (int, float)) else "-"
        print(f"  {s.request_id:26} {s.session or '-':24} {s.status or '-'!s:6} {endpoint:32} "
              f"{line.get('attempts', '-')!s:8} {ttft_s:>7} {line.get('completion_tokens', '-')!s:>6}  {line.get('scores', '')}")
        # Why, in words.
        role = pods.get(endpoint, {}).get("role", "?")
        if s.session:
            why = (f"session {s.session}: rendezvous hashing prefers {preferred}; "
                   f"session-affinity scored it 1 (weight 2) on top of load")
        else:
            busy = {}
            for t in busy_at_send[s.request_id]:
                busy[ep(t)] = busy.get(ep(t), 0) + 1
            loads = ", ".join(f"{n} {busy.get(n, 0)}" for n in sorted(endpoints))
            if not busy:
                why = "nothing in flight: the load scores tie; kv-cache-usage, then a random pick decide"
            elif len(set(busy.get(n, 0) for n in endpoints)) == 1:
                why = f"requests in flight per pod ({loads}) tie; kv-cache-usage, then a random pick decide"
            else:
                why = f"requests in flight per pod when sent: {loads}; least-request prefers the least loaded"
        prefill = line.get("prefill_endpoint", "-")
        print(f"  {'':26} -> {role} pod {endpoint} ({pods.get(endpoint, {}).get('ip', '?')}): {why}")
        print(f"  {'':26}    prefill leg: {prefill} (group {pods.get(prefill, {}).get('group', '?')}); "
              f"decode pod group {pods.get(endpoint, {}).get('group', '?')}; pd={line.get('pd', '-')}")
        if s.text:
            print(f"  {'':26}    streamed {s.chunks} chunks: {s.text[:60]!r}{'…' if len(s.text) > 60 else ''}")

        check(s.status == 200, f"{s.request_id}: HTTP {s.status} {s.error or ''}", served=True)
        check(s.error is None, f"{s.request_id}: stream error {s.error}", served=True)
        check(s.done, f"{s.request_id}: the stream did not end with data: [DONE]", served=True)
        check(s.chunks >= (96 if not s.session else 24) - 1,
              f"{s.request_id}: {s.chunks} content chunks for max_tokens {96 if not s.session else 24}")
        check(bool(line), f"{s.request_id}: no access-log line in {a.router_log}")
        if line:
            check(line.get("status") == 200, f"{s.request_id}: access log status {line.get('status')}")
            check(line.get("server") == server, f"{s.request_id}: server {line.get('server')}, expected {server}")
            check(line.get("route") == f"{a.namespace}/llama", f"{s.request_id}: route {line.get('route')}")
            check(role == "decode", f"{s.request_id}: went to {endpoint} ({role}), expected a decode pod")
            check(line.get("completed") is True, f"{s.request_id}: access log says completed={line.get('completed')}")
            check(line.get("pd") == "disaggregated", f"{s.request_id}: pd={line.get('pd')}, expected disaggregated")
            check(pods.get(prefill, {}).get("role") == "prefill",
                  f"{s.request_id}: prefill leg went to {prefill}, not a prefill pod")
            check(pods.get(prefill, {}).get("group") == pods.get(endpoint, {}).get("group"),
                  f"{s.request_id}: prefill {prefill} and decode {endpoint} are in different ServingGroups")

    # The 2nd request was routed while the 1st streamed (if it still did): it must avoid that pod.
    if load[0] in busy_at_send[load[1].request_id]:
        check(ep(load[1]) != ep(load[0]),
              f"{load[1].request_id} was sent while {load[0].request_id} streamed on {ep(load[0])}, yet went there too")
    sess_eps = {logs.get(s.request_id, {}).get("endpoint") for s in sess}
    check(sess_eps == {preferred}, f"session requests went to {sess_eps}, /debug/sessions prefers {preferred}")

    used = {}
    for s in streams:
        for key in ("endpoint", "prefill_endpoint"):
            e = logs.get(s.request_id, {}).get(key, "?")
            used[e] = used.get(e, 0) + 1
    print("\nRequests per pod (decode and prefill legs): "
          + ", ".join(f"{k} {v}" for k, v in sorted(used.items())) + f"; {PD_NOTE}")

    if served_failures or (a.check and failures):
        print("\nCHECK FAILED:", file=sys.stderr)
        for f in served_failures + (failures if a.check else []):
            print(f"  - {f}", file=sys.stderr)
        sys.exit(1)
    if failures:
        print("\nwarnings:\n" + "\n".join(f"  - {f}" for f in failures))
    if a.check:
        print(f"\nchecks passed: {len(streams)} streamed responses ended with [DONE], every access line "
              f"names a decode pod and a prefill pod of its own ServingGroup, overlapping requests spread, "
              f"the session stuck to {preferred}")


if __name__ == "__main__":
    main()
