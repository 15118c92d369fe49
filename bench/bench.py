#!/usr/bin/env python3
"""spapi-proxy against nginx proxy_pass, on loopback only, with the same header work.

Prints one table: req/s and p50/p99 (wrk) for the upstream directly, nginx proxy_pass and
spapi-proxy, several runs each with ratios from the same run; instructions per request under
callgrind (deterministic: the figure to steer by); RSS with 1,000 idle keep-alive connections
and while streaming 1 GiB each way; time to /_proxy/ready; and the same figures for the RDT
path (getOrderAddress) and with the limiter on. Run it with `bench/run`.
"""

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("SPAPI_BENCH_BIN") or os.path.join(ROOT, "target", "release", "spapi-proxy")
# bench/floor: a minimal hyper proxy doing the same header work, the floor.
FLOOR_BIN = os.environ.get("SPAPI_BENCH_FLOOR_BIN") or os.path.join(ROOT, "target", "release", "hyper-floor")
ORDERS = "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER"
ADDRESS = "/orders/v0/orders/902-3159896-1390916/address"
BODY = '{"payload":{"Orders":[{"AmazonOrderId":"902-3159896-1390916","OrderStatus":"Unshipped"}],"CreatedBefore":"2026-11-23T12:00:00Z"}}'


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=60.0, want=200):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == want:
                    return True
        except Exception:
            time.sleep(0.02)
    raise SystemExit(f"no answer from {url}")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Bench:
    def __init__(self, args):
        self.args = args
        self.dir = tempfile.mkdtemp(prefix="spapi-bench-")
        # nginx workers started by root run as nobody: they must be able to read the files here.
        os.chmod(self.dir, 0o755)
        self.upstream_port = free_port()
        self.nginx_port = free_port()
        self.proxy_port = free_port()
        self.floor_port = free_port()
        self.procs = []

    # --- processes -------------------------------------------------------------------------

    def nginx_conf(self, name, server_block):
        path = os.path.join(self.dir, f"{name}.conf")
        with open(path, "w") as f:
            f.write(
                f"""
worker_processes 1;
error_log {self.dir}/{name}-error.log warn;
pid {self.dir}/{name}.pid;
events {{ worker_connections 8192; }}
http {{
  client_body_temp_path {self.dir}/{name}-body;
  proxy_temp_path {self.dir}/{name}-proxy;
  fastcgi_temp_path {self.dir}/{name}-fcgi;
  uwsgi_temp_path {self.dir}/{name}-uwsgi;
  scgi_temp_path {self.dir}/{name}-scgi;
  keepalive_requests 1000000;
  {server_block}
}}
"""
            )
        return path

    def start_upstream(self):
        big = os.path.join(self.dir, "big.bin")
        with open(big, "wb") as f:
            f.truncate(1 << 30)
        conf = self.nginx_conf(
            "upstream",
            f"""
  access_log off;
  server {{
    listen 127.0.0.1:{self.upstream_port} reuseport;
    client_max_body_size 0;
    default_type application/json;
    location = /auth/o2/token {{ return 200 '{{"access_token":"Atza|bench-token","token_type":"bearer","expires_in":3600}}'; }}
    location = /tokens/2021-03-01/restrictedDataToken {{ return 200 '{{"restrictedDataToken":"Atz.sprdt|bench-rdt","expiresIn":3600}}'; }}
    location = /big {{ alias {big}; default_type application/octet-stream; }}
    location = /upload {{ return 200 '{{}}'; }}
    location / {{ return 200 '{BODY}'; }}
  }}""",
        )
        self.spawn(["nginx", "-c", conf, "-g", "daemon off;"], "upstream")
        wait_http(f"http://127.0.0.1:{self.upstream_port}/x")

    def nginx_proxy_conf(self):
        # The same header work as spapi-proxy: token, date, user-agent, Host.
        return self.nginx_conf(
            "proxy",
            f"""
  access_log {self.dir}/proxy-access.log;
  upstream sp {{ server 127.0.0.1:{self.upstream_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{self.nginx_port};
    client_max_body_size 0;
    location / {{
      proxy_pass http://sp;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host sellingpartnerapi-na.amazon.com;
      proxy_set_header x-amz-access-token "Atza|bench-token";
      proxy_set_header x-amz-date $time_iso8601;
      proxy_set_header User-Agent "bench/1.0 (Language=C)";
    }}
  }}""",
        )

    def start_nginx_proxy(self, under=()):
        conf = self.nginx_proxy_conf()
        p = self.spawn(list(under) + ["nginx", "-c", conf, "-g", "daemon off; master_process off;"], "nginx")
        wait_http(f"http://127.0.0.1:{self.nginx_port}{ORDERS}")
        return p

    def proxy_env(self, toml_text="", log="info"):
        config = os.path.join(self.dir, "proxy.toml")
        with open(config, "w") as f:
            f.write(toml_text)
        env = dict(os.environ)
        env.update(
            {
                "SPAPI_ENDPOINT": f"http://127.0.0.1:{self.upstream_port}",
                "SPAPI_TOKEN_URL": f"http://127.0.0.1:{self.upstream_port}/auth/o2/token",
                "SPAPI_CLIENT_ID": "bench",
                "SPAPI_CLIENT_SECRET": "bench-secret",
                "SPAPI_REFRESH_TOKEN": "Atzr|bench",
                "SPAPI_LISTEN": f"127.0.0.1:{self.proxy_port}",
                "RUST_LOG": log,
            }
        )
        if "rate_limit" not in toml_text:
            env["SPAPI_RATE_LIMIT"] = "off"
        return env, config

    def start_proxy(self, toml_text="", under=(), wait=True, log="info"):
        env, config = self.proxy_env(toml_text, log)
        p = self.spawn(list(under) + [BIN, "serve", "--config", config], "spapi-proxy", env=env)
        if wait:
            wait_http(f"http://127.0.0.1:{self.proxy_port}/_proxy/ready", timeout=120)
        return p

    def spawn(self, cmd, name, env=None):
        log = open(os.path.join(self.dir, f"{name}.log"), "ab")
        p = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, cwd=self.dir)
        self.procs.append(p)
        return p

    def stop(self, p, sig=signal.SIGTERM):
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def cleanup(self):
        # SIGTERM first: an nginx master killed outright leaves its worker behind, busy.
        for p in self.procs:
            self.stop(p)
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- measurements ----------------------------------------------------------------------

    def wrk(self, port, path, pid=None):
        """req/s, p50 and p99 ms, and (given the server's pid) its CPU microseconds per request,
        user and system."""
        before = cpu_ticks(pid) if pid else None
        out = subprocess.run(
            ["wrk", "-t1", f"-c{self.args.connections}", f"-d{self.args.seconds}s", "--latency", f"http://127.0.0.1:{port}{path}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        after = cpu_ticks(pid) if pid else None
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        done = int(re.search(r"(\d+) requests in", out).group(1))
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        if errors:
            raise SystemExit(f"wrk saw {errors.group(1)} errors on port {port}:\n{out}")

        def pct(p):
            value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)\b", out).groups()
            return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

        cpu = None
        if before and after and done:
            us = 1e6 / os.sysconf("SC_CLK_TCK") / done
            cpu = ((after[0] - before[0]) * us, (after[1] - before[1]) * us)
        return rps, pct(50), pct(99), cpu

    def throughput(self, path, toml_text="", floor=False):
        """Several interleaved runs of direct, nginx and spapi-proxy (and hyper's floor, which
        does getOrders' header work only); ratios per run."""
        rows = {"direct": [], "nginx": [], "spapi-proxy": []}
        nginx = self.start_nginx_proxy()
        proxy = self.start_proxy(toml_text)
        targets = [("direct", self.upstream_port, None), ("nginx", self.nginx_port, nginx), ("spapi-proxy", self.proxy_port, proxy)]
        if floor:
            rows["hyper's floor"] = []
            targets.append(("hyper's floor", self.floor_port, self.start_floor(self.floor_port)))
        for _ in range(self.args.runs):
            for name, port, p in targets:
                rows[name].append(self.wrk(port, path, p.pid if p else None))
        for _, _, p in targets:
            if p:
                self.stop(p)
        return rows

    def curl_requests(self, port, path, n):
        sep = "&" if "?" in path else "?"
        subprocess.run(
            ["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}{path}{sep}n=[1-{n}]"],
            check=True,
        )

    def callgrind_total(self, start, port, path, n):
        out = os.path.join(self.dir, f"callgrind.{time.time_ns()}")
        p = start(("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"))
        self.curl_requests(port, path, self.args.warmup)
        if n:
            self.curl_requests(port, path, n)
        self.stop(p)
        keep = os.environ.get("BENCH_KEEP_CALLGRIND")
        if keep and n:
            # For callgrind_annotate: each measured run's profile, numbered in order.
            self.kept = getattr(self, "kept", 0) + 1
            shutil.copy(out, f"{keep}.{self.kept}")
        with open(out) as f:
            for line in f:
                if line.startswith("summary:") or line.startswith("totals:"):
                    return int(line.split()[1])
        raise SystemExit("no callgrind totals")

    def instructions(self, start, port, path):
        n = self.args.requests
        base = self.callgrind_total(start, port, path, 0)
        full = self.callgrind_total(start, port, path, n)
        return (full - base) / n

    def proxy_instructions(self, path, toml_text="", log="info"):
        def start(under):
            return self.start_proxy(toml_text, under=under, log=log)

        return self.instructions(start, self.proxy_port, path)

    def start_floor(self, port, under=()):
        env, _ = self.proxy_env()
        env["SPAPI_LISTEN"] = f"127.0.0.1:{port}"
        p = self.spawn(list(under) + [FLOOR_BIN], "hyper-floor", env=env)
        wait_http(f"http://127.0.0.1:{port}/_proxy/ready", timeout=120)
        return p

    def floor_instructions(self, path):
        return self.instructions(lambda under: self.start_floor(self.proxy_port, under), self.proxy_port, path)

    def nginx_instructions(self, path):
        return self.instructions(lambda under: self.start_nginx_proxy(under=under), self.nginx_port, path)

    def idle_rss(self):
        p = self.start_proxy()
        before = rss_kib(p.pid)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
        socks = []
        for _ in range(1000):
            s = socket.create_connection(("127.0.0.1", self.proxy_port))
            s.sendall(b"GET /_proxy/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            socks.append(s)
        for s in socks:
            s.recv(4096)
        time.sleep(0.5)
        after = rss_kib(p.pid)
        for s in socks:
            s.close()
        self.stop(p)
        return before / 1024, after / 1024

    def streaming_rss(self):
        # The upstream's first read of the sparse 1 GiB file runs at the page cache's pace, not
        # the proxy's: read it once directly, so the timed download measures the proxy.
        subprocess.run(["curl", "-sf", "-o", "/dev/null", f"http://127.0.0.1:{self.upstream_port}/big"], check=True)
        p = self.start_proxy()
        idle = rss_kib(p.pid)
        peaks = {}
        big = os.path.join(self.dir, "big.bin")
        for name, cmd in [
            ("download", ["curl", "-sf", "-o", "/dev/null", "-w", "%{size_download}", f"http://127.0.0.1:{self.proxy_port}/big"]),
            ("upload", ["curl", "-sf", "-o", "/dev/null", "-w", "%{size_upload}", "-T", big, f"http://127.0.0.1:{self.proxy_port}/upload"]),
        ]:
            peak = [idle]
            done = threading.Event()

            def sample():
                while not done.is_set():
                    peak[0] = max(peak[0], rss_kib(p.pid))
                    time.sleep(0.05)

            t = threading.Thread(target=sample)
            t.start()
            started = time.time()
            moved = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            took = time.time() - started
            if int(float(moved or 0)) < 1 << 30:
                raise SystemExit(f"streaming {name}: only {moved} bytes went through the proxy")
            done.set()
            t.join()
            peaks[name] = ((peak[0] - idle) / 1024, took)
        self.stop(p)
        return idle / 1024, peaks

    def startup(self):
        env, config = self.proxy_env()
        times = []
        for _ in range(5):
            started = time.perf_counter()
            p = subprocess.Popen([BIN, "serve", "--config", config], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            url = f"http://127.0.0.1:{self.proxy_port}/_proxy/ready"
            while True:
                try:
                    with urllib.request.urlopen(url, timeout=1) as r:
                        if r.status == 200:
                            break
                except Exception:
                    time.sleep(0.001)
            times.append((time.perf_counter() - started) * 1000)
            self.stop(p)
        return statistics.median(times)


def cpu_ticks(pid):
    """User and system CPU clock ticks a process (all its threads) has used."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def fmt_rows(title, rows):
    out = [f"\n{title}", f"{'':14}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/req':>12}   per run (req/s, p99 ms)"]
    for name, runs in rows.items():
        rps = statistics.median(r[0] for r in runs)
        p50 = statistics.median(r[1] for r in runs)
        p99 = statistics.median(r[2] for r in runs)
        cpu = [r[3] for r in runs if r[3]]
        cpu = f"{statistics.median(c[0] for c in cpu):.1f}+{statistics.median(c[1] for c in cpu):.1f}" if cpu else ""
        per = ", ".join(f"{r[0]:.0f} {r[2]:.2f}" for r in runs)
        out.append(f"{name:14}{rps:>10.0f}{p50:>9.2f}{p99:>9.2f}{cpu:>12}   {per}")
    out.append("  (CPU: the server's own user+system microseconds per request, median)")
    for name in [n for n in rows if n not in ("direct", "nginx")]:
        ratios = [p[0] / n[0] for p, n in zip(rows[name], rows["nginx"])]
        p99s = [p[2] / n[2] for p, n in zip(rows[name], rows["nginx"])]
        out.append(
            f"{name}/nginx, same run: req/s {', '.join(f'{r:.2f}x' for r in ratios)}; "
            f"p99 {', '.join(f'{r:.2f}x' for r in p99s)}"
        )
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--only", choices=["throughput", "instructions", "memory", "startup", "paths"], action="append")
    args = ap.parse_args()
    only = set(args.only or ["throughput", "instructions", "memory", "startup", "paths"])
    b = Bench(args)
    report = [f"spapi-proxy benchmark: {os.cpu_count()} cores, wrk -t1 -c{args.connections} -d{args.seconds}s x {args.runs} runs, loopback"]
    try:
        b.start_upstream()
        if "instructions" in only:
            warn_ir = b.proxy_instructions(ORDERS, log="warn")
            proxy_ir = b.proxy_instructions(ORDERS)
            nginx_ir = b.nginx_instructions(ORDERS)
            floor_ir = b.floor_instructions(ORDERS)
            report.append(
                f"\ninstructions per request (callgrind, {args.requests} keep-alive requests after {args.warmup}):\n"
                f"  nginx proxy_pass                {nginx_ir:>9,.0f}\n"
                f"  hyper floor (bench/floor)      {floor_ir:>9,.0f}   ({floor_ir / nginx_ir:.2f}x nginx)\n"
                f"  spapi-proxy (default log level) {proxy_ir:>9,.0f}   ({proxy_ir / nginx_ir:.2f}x nginx)\n"
                f"  spapi-proxy, RUST_LOG=warn      {warn_ir:>9,.0f}   ({warn_ir / nginx_ir:.2f}x nginx)"
            )
            if "paths" in only:
                rdt_ir = b.proxy_instructions(ADDRESS)
                lim_ir = b.proxy_instructions(ORDERS, "rate_limit = true\n[operations.getOrders]\nrate = 100000\nburst = 100000\n")
                report.append(
                    f"  spapi-proxy, RDT path (getOrderAddress)      {rdt_ir:>9,.0f}\n"
                    f"  spapi-proxy, limiter on, quota to spare      {lim_ir:>9,.0f}"
                )
            print(report[-1], flush=True)
        if "throughput" in only:
            report.append(fmt_rows("throughput, getOrders (token cached, rate limiting off):", b.throughput(ORDERS, floor=True)))
            print(report[-1], flush=True)
        if "paths" in only:
            report.append(fmt_rows("throughput, getOrderAddress (RDT cached):", b.throughput(ADDRESS)))
            print(report[-1], flush=True)
            report.append(
                fmt_rows(
                    "throughput, getOrders with the limiter on and quota to spare:",
                    b.throughput(ORDERS, "rate_limit = true\n[operations.getOrders]\nrate = 100000\nburst = 100000\n"),
                )
            )
            print(report[-1], flush=True)
        if "memory" in only:
            before, after = b.idle_rss()
            idle, peaks = b.streaming_rss()
            report.append(
                f"\nmemory (RSS): {before:.1f} MiB at start, {after:.1f} MiB with 1,000 idle keep-alive connections\n"
                f"  streaming 1 GiB: download +{peaks['download'][0]:.1f} MiB over idle ({1024 / peaks['download'][1]:.0f} MiB/s), "
                f"upload +{peaks['upload'][0]:.1f} MiB ({1024 / peaks['upload'][1]:.0f} MiB/s)"
            )
            print(report[-1], flush=True)
        if "startup" in only:
            report.append(f"\nstart-up: process start to /_proxy/ready 200 in {b.startup():.1f} ms (median of 5)")
            print(report[-1], flush=True)
    finally:
        b.cleanup()
    print("\n" + "=" * 78)
    print("\n".join(report))


if __name__ == "__main__":
    main()
