#!/usr/bin/python3
"""Observability end to end: `reel serve` (coordinator + one worker) and one more `reel worker` with --metrics, a real
Prometheus on loopback scraping them every second with deploy/prometheus/'s rules, and a few tiny jobs. Checks that
the live scrapes pass `promtool check metrics`, that every metric and label the dashboard and the rules name is in
them, that every recording rule yields series and evaluates without error, and reads throughput and device memory
back through Prometheus' HTTP API. Usage: observe_test.py REEL_BINARY (REEL_SOURCE_DIR set)."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deploy_util as du  # noqa: E402

REEL = None
JOBS = 3
FRAMES = 9
DEVICE_MEMORY = 1 << 30


def wait_for(cond, seconds, what):
    end = time.monotonic() + seconds
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.2)


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def free_port():
    # Prometheus takes a fixed address; the kernel picks a free one, released just before Prometheus binds it.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Observe(unittest.TestCase):
    procs = []

    @classmethod
    def start(cls, argv, log):
        with open(log, "w") as out:  # the child keeps its own descriptor
            p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        cls.procs.append((p, log))
        return p

    @classmethod
    def logs(cls):
        out = []
        for p, log in cls.procs:
            with open(log) as f:
                out.append(f"--- {log}\n{f.read()[-4000:]}")
        return "\n".join(out)

    @classmethod
    def setUpClass(cls):
        if not REEL or not os.access(REEL, os.X_OK):
            raise unittest.SkipTest(f"reel binary {REEL!r}: not built")
        for tool in ("prometheus", "promtool"):
            if not shutil.which(tool):
                raise unittest.SkipTest(f"{tool} not installed (Debian package prometheus; scripts/install_deps.sh)")
        cls.dir = tempfile.mkdtemp(prefix="reel-observe-")
        os.environ.setdefault("REEL_CACHE_DIR", os.path.join(cls.dir, "cache"))
        data = os.path.join(cls.dir, "data")
        try:
            cls.bring_up(data)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def bring_up(cls, data):
        # The extra worker holds every stage the jobs need after the prompt, so its /metrics has stage and step
        # series; serve's own worker w0 holds the text encoder only.
        placement = os.path.join(cls.dir, "placement.json")
        with open(placement, "w") as f:
            json.dump({"workers": [{"name": "w0", "stages": ["text_encoder"]},
                                   {"name": "wm", "stages": ["text_encoder", "denoiser", "vae_decoder"]}]}, f)
        cls.start([REEL, "serve", "--workers", "1", "--threads", "1", "--listen", "127.0.0.1:0", "--metrics",
                   "127.0.0.1:0", "--data", data, "--device-memory", "1GiB", "--placement", placement,
                   "--heartbeat-ms", "200"], os.path.join(cls.dir, "serve.log"))
        def read(name):  # reel writes DATA/coordinator.address and DATA/metrics.address once bound
            path = os.path.join(data, name)
            if not os.path.exists(path):
                return ""
            with open(path) as f:
                return f.read().strip()
        cls.coordinator = wait_for(lambda: read("coordinator.address"), 60, "DATA/coordinator.address")
        cls.coordinator_metrics = wait_for(lambda: read("metrics.address"), 10, "DATA/metrics.address")
        wm_log = os.path.join(cls.dir, "wm.log")
        cls.start([REEL, "worker", "--coordinator", cls.coordinator, "--name", "wm", "--threads", "1",
                   "--device-memory", "1GiB", "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"], wm_log)
        def logged_port():
            with open(wm_log) as f:
                return re.findall(r"metrics on port (\d+)", f.read())
        port = wait_for(logged_port, 30, "the worker's metrics port")
        cls.worker_metrics = f"127.0.0.1:{port[0]}"

        # Prometheus, with the repository's rules and the live addresses.
        cls.prom = f"127.0.0.1:{free_port()}"
        config = os.path.join(cls.dir, "prometheus.yml")
        with open(config, "w") as f:
            json.dump({"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                       "rule_files": du.RULE_FILES,
                       "scrape_configs": [
                           {"job_name": "reel-coordinator", "static_configs": [{"targets": [cls.coordinator_metrics]}]},
                           {"job_name": "reel-worker", "static_configs": [{"targets": [cls.worker_metrics]}]}]}, f)
        cls.start(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={os.path.join(cls.dir, 'tsdb')}",
                   f"--web.listen-address={cls.prom}", "--log.level=warn"], os.path.join(cls.dir, "prometheus.log"))

        def idle():
            r = subprocess.run([REEL, "workers", "--json", "--coordinator", cls.coordinator], capture_output=True, text=True)
            return r.returncode == 0 and sum(w.get("state") == "idle" for w in json.loads(r.stdout).get("workers", [])) == 2
        wait_for(idle, 60, "two idle workers")
        # Prometheus must have scraped the counters before the jobs move them, or rate() sees no increase.
        wait_for(lambda: cls.ready(), 30, "Prometheus /-/ready")

        def scraped():
            url = f"http://{cls.prom}/api/v1/query?" + urllib.parse.urlencode(
                {"query": 'up{job=~"reel-coordinator|reel-worker"} == 1'})
            try:
                return len(json.loads(http_get(url))["data"]["result"]) == 2
            except OSError:
                return False
        wait_for(scraped, 30, "Prometheus scraping both targets")
        # The first job creates the workers' per-stage series; the others run after a few scrapes, so rate() sees
        # those series increase too.
        cls.submit([0])
        time.sleep(3)
        cls.submit(range(1, JOBS))

    @classmethod
    def submit(cls, indices):
        submits = [subprocess.Popen([REEL, "submit", "--coordinator", cls.coordinator, "--model", "tiny", "--prompt",
                                     f"a red fox {i}", "--frames", str(FRAMES), "--height", "64", "--width", "64",
                                     "--steps", "2", "--seed", str(i), "--wait", "--out",
                                     os.path.join(cls.dir, f"job{i}.mp4")],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in indices]
        for s in submits:
            out, _ = s.communicate(timeout=120)
            if s.returncode != 0:
                raise AssertionError(f"reel submit failed ({s.returncode}): {out}\n{cls.logs()}")

    @classmethod
    def ready(cls):
        try:
            return http_get(f"http://{cls.prom}/-/ready") != ""
        except OSError:
            return False

    @classmethod
    def tearDownClass(cls):
        for p, _ in reversed(cls.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p, _ in cls.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        if hasattr(cls, "dir") and not os.environ.get("REEL_KEEP_TEST_DIR"):
            shutil.rmtree(cls.dir, ignore_errors=True)

    def query(self, expr):
        url = f"http://{self.prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        body = json.loads(http_get(url))
        self.assertEqual(body["status"], "success", body)
        return body["data"]["result"]

    def eventually(self, expr, cond, what, seconds=30):
        last = []

        def check():
            last[:] = self.query(expr)
            return cond(last)
        try:
            wait_for(check, seconds, what)
        except AssertionError as e:
            raise AssertionError(f"{e}; {expr} = {last}\n{self.logs()}") from None
        return last

    def scrapes(self):
        return {"coordinator": http_get(f"http://{self.coordinator_metrics}/metrics"),
                "worker": http_get(f"http://{self.worker_metrics}/metrics")}

    def test_live_scrapes_pass_promtool_check_metrics(self):
        for who, text in self.scrapes().items():
            self.assertIn("reel_", text)
            r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
            self.assertEqual((r.returncode, r.stdout + r.stderr), (0, ""), who)
        # The check is live: a counter without _total is reported.
        r = subprocess.run(["promtool", "check", "metrics"], input="# HELP reel_bad x\n# TYPE reel_bad counter\nreel_bad 1\n",
                           capture_output=True, text=True)
        self.assertNotEqual(r.returncode, 0)

    def test_every_metric_and_label_in_the_dashboard_and_rules_is_exported(self):
        samples = {}
        for text in self.scrapes().values():
            for name, series in du.parse_scrape(text).items():
                samples.setdefault(name, []).extend(series)
        exprs = du.expressions()
        self.assertGreater(len(exprs), 30)
        self.assertEqual(du.missing_from_scrape(exprs, samples, du.recorded_names()), [])
        # A panel with a misspelt metric, a bare histogram name or a wrong label value is caught.
        bad = exprs + [("panel x", "rate(reel_frames_generatd_total[5m])"),
                       ("panel y", "rate(reel_job_duration_seconds[5m])"),
                       ("panel z", 'reel_worker_device_memory_bytes{kind="capacty"}'),
                       ("panel w", "reel:no_such_rule")]
        problems = "\n".join(du.missing_from_scrape(bad, samples, du.recorded_names()))
        for name in ("reel_frames_generatd_total", "reel_job_duration_seconds (", 'kind="capacty"', "reel:no_such_rule"):
            self.assertIn(name, problems)

    def test_prometheus_reads_throughput_and_device_memory(self):
        up = self.eventually('up{job=~"reel-coordinator|reel-worker"}', lambda r: len(r) == 2 and all(
            s["value"][1] == "1" for s in r), "both targets up")
        self.assertEqual(len(up), 2)
        frames = self.eventually('sum(reel_frames_generated_total{job="reel-coordinator"})',
                                 lambda r: r and float(r[0]["value"][1]) == JOBS * FRAMES, "the frames of every job")
        self.assertEqual(float(frames[0]["value"][1]), JOBS * FRAMES)
        fps = self.eventually("reel:frames_per_second:rate1m", lambda r: r and float(r[0]["value"][1]) > 0,
                              "the frames-per-second recording rule")
        self.assertGreater(float(fps[0]["value"][1]), 0)
        done = self.eventually('reel:jobs_per_hour:rate15m{event="succeeded"}',
                               lambda r: r and float(r[0]["value"][1]) > 0, "jobs per hour")
        self.assertGreater(float(done[0]["value"][1]), 0)
        cap = self.eventually('reel_worker_device_memory_bytes{kind="capacity"}', lambda r: len(r) == 2,
                              "both workers' device capacity")
        self.assertEqual(sorted(s["metric"]["worker"] for s in cap), ["w0", "wm"])
        self.assertTrue(all(float(s["value"][1]) == DEVICE_MEMORY for s in cap), cap)
        peak = self.query('reel_worker_device_memory_bytes{kind="peak",worker="wm"}')
        self.assertGreater(float(peak[0]["value"][1]), 0)
        head = self.eventually("reel:worker_device_memory_headroom_bytes", lambda r: len(r) == 2, "headroom")
        for s in head:
            self.assertTrue(0 < float(s["value"][1]) <= DEVICE_MEMORY, s)
        own = self.eventually("reel:device_memory_headroom_bytes", lambda r: len(r) == 1, "the worker's own headroom")
        self.assertEqual(own[0]["metric"]["job"], "reel-worker")
        steps = self.eventually('reel:step_duration_seconds:mean5m{stage="denoiser"}',
                               lambda r: r and float(r[0]["value"][1]) > 0, "step time")
        self.assertGreater(float(steps[0]["value"][1]), 0)
        self.assertEqual(steps[0]["metric"]["strategy"], "none")

    def test_every_rule_evaluates_and_every_recording_rule_yields_series(self):
        for name in sorted(du.recorded_names()):
            self.eventually(name, lambda r: r, f"a series of {name}")

        def healthy():
            groups = json.loads(http_get(f"http://{self.prom}/api/v1/rules"))["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            return len(rules) == 18 and all(r["health"] == "ok" for r in rules) and rules
        rules = wait_for(healthy, 20, "every rule evaluated with health ok")
        # A healthy cluster raises no alert.
        alerts = [r for r in rules if r["type"] == "alerting" and r["state"] != "inactive"]
        self.assertEqual([(a["name"], a["state"]) for a in alerts], [])


class OutOfMemory(unittest.TestCase):
    """A worker whose device is too small for the decoder: every attempt of its OOM ladder is counted in
    reel_device_oom_total and reel_stage_runs_total{outcome="oom"}, which ReelDeviceOutOfMemory reads."""

    def test_a_worker_counts_each_out_of_memory_run(self):
        if not REEL or not os.access(REEL, os.X_OK):
            self.skipTest(f"reel binary {REEL!r}: not built")
        d = tempfile.mkdtemp(prefix="reel-oom-")
        procs = []
        try:
            data = os.path.join(d, "data")
            with open(os.path.join(d, "coordinator.log"), "w") as log:
                procs.append(subprocess.Popen([REEL, "coordinator", "--listen", "127.0.0.1:0", "--data", data,
                                               "--no-plan", "--heartbeat-ms", "200"], stdout=log, stderr=log))
            addr_file = os.path.join(data, "coordinator.address")
            wait_for(lambda: os.path.exists(addr_file), 30, "DATA/coordinator.address")
            with open(addr_file) as f:
                addr = f.read().strip()
            wlog = os.path.join(d, "worker.log")
            with open(wlog, "w") as log:  # the weights fit in 30 MiB, the decoder's activations do not
                procs.append(subprocess.Popen([REEL, "worker", "--coordinator", addr, "--name", "small", "--threads", "1",
                                               "--device-memory", "30MiB", "--metrics", "127.0.0.1:0"],
                                              stdout=log, stderr=log))

            def port():
                with open(wlog) as f:
                    return re.findall(r"metrics on port (\d+)", f.read())
            metrics = f"127.0.0.1:{wait_for(port, 30, 'the worker metrics port')[0]}"
            r = subprocess.run([REEL, "submit", "--coordinator", addr, "--model", "tiny", "--prompt", "a fox",
                                "--frames", "9", "--height", "64", "--width", "64", "--steps", "2", "--wait",
                                "--out", os.path.join(d, "x.mp4")], capture_output=True, text=True, timeout=120)
            self.assertNotEqual(r.returncode, 0, "the job was expected to run out of device memory")
            self.assertIn("out of memory", r.stdout + r.stderr)
            text = http_get(f"http://{metrics}/metrics")
            samples = du.parse_scrape(text)
            ooms = sum(float(v) for v in re.findall(r'^reel_device_oom_total\{[^}]*stage="vae_decoder"[^}]*\} (\S+)$',
                                                    text, re.M))
            with open(wlog) as f:
                retries = f.read().count("retrying with")
            self.assertGreater(retries, 0)
            self.assertEqual(ooms, retries + 1, "one count per attempt: each retried one and the last")
            self.assertTrue(any(s.get("outcome") == "oom" for s in samples["reel_stage_runs_total"]))
            r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(timeout=10)
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-"):
        REEL = os.path.abspath(sys.argv.pop(1))
    result = unittest.main(verbosity=2, exit=False).result
    if result.skipped and result.wasSuccessful() and len(result.skipped) >= result.testsRun:
        print("SKIPPED: every check was skipped (see the reasons above)")
    sys.exit(0 if result.wasSuccessful() else 1)
