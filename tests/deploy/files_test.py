#!/usr/bin/python3
"""Static checks of deploy/: Prometheus configuration and rules (promtool check/test), the compose file (the Compose
schema through `docker-compose config`), the Kubernetes manifests (strict schema of k8s_schema.py, `kubectl
kustomize`, selectors and ports), the systemd units (`systemd-analyze verify`), the Grafana dashboard's structure,
and every reel command line in them against `reel SUBCOMMAND --help`. A check whose tool is absent is skipped and
says which. Usage: files_test.py REEL_BINARY (REEL_SOURCE_DIR set)."""
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import unittest

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deploy_util as du  # noqa: E402

REEL = None
K8S = os.path.join(du.DEPLOY, "kubernetes")
COMPOSE = os.path.join(du.DEPLOY, "compose", "compose.yaml")
SYSTEMD = os.path.join(du.DEPLOY, "systemd")


def run(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, **kw)


def need(tool, package):
    path = shutil.which(tool)
    if not path:
        raise unittest.SkipTest(f"{tool} not installed (Debian package {package}; scripts/install_deps.sh installs it)")
    return path


def k8s_docs():
    docs = []
    for path in sorted(glob.glob(os.path.join(K8S, "*.yaml"))):
        if os.path.basename(path) == "kustomization.yaml":
            continue
        with open(path) as f:
            for i, d in enumerate(yaml.safe_load_all(f)):
                if d:
                    docs.append((f"{os.path.basename(path)}#{i}", d))
    return docs


class Prometheus(unittest.TestCase):
    def test_configs_and_the_rules_they_load_pass_promtool_check_config(self):
        need("promtool", "prometheus")
        for name in ("prometheus.yml", "kubernetes.yml"):
            r = run(["promtool", "check", "config", os.path.join(du.PROM, name)])
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("2 rule files found", r.stdout + r.stderr)

    def test_rules_pass_promtool_check_rules(self):
        need("promtool", "prometheus")
        r = run(["promtool", "check", "rules"] + du.RULE_FILES)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_alert_unit_tests_pass_and_a_wrong_threshold_fails_them(self):
        need("promtool", "prometheus")
        r = run(["promtool", "test", "rules", "alerts.test.yml"], cwd=du.PROM)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        with tempfile.TemporaryDirectory() as d:
            for f in ("recording.rules.yml", "alerts.rules.yml", "alerts.test.yml"):
                shutil.copy(os.path.join(du.PROM, f), d)
            path = os.path.join(d, "alerts.rules.yml")
            with open(path) as f:
                text = f.read()
            with open(path, "w") as f:
                f.write(text.replace("reel:worker_device_memory_peak:ratio > 0.95",
                                     "reel:worker_device_memory_peak:ratio > 0.99"))
            r = run(["promtool", "test", "rules", "alerts.test.yml"], cwd=d)
            self.assertNotEqual(r.returncode, 0, "the alert tests did not notice a changed threshold")

    def test_kubernetes_config_scrapes_the_headless_services_of_the_manifests(self):
        with open(os.path.join(du.PROM, "kubernetes.yml")) as f:
            conf = yaml.safe_load(f)
        services = {d["metadata"]["name"]: d for _, d in k8s_docs() if d["kind"] == "Service"}
        for job in conf["scrape_configs"]:
            for sd in job.get("dns_sd_configs", []):
                for name in sd["names"]:
                    svc, ns = name.split(".")[:2]
                    self.assertEqual(ns, "reel", name)
                    self.assertIn(svc, services, f"{name}: no such Service in deploy/kubernetes")
                    self.assertEqual(services[svc]["spec"].get("clusterIP"), "None", f"{svc} must be headless")
                    self.assertIn(sd["port"], [p["port"] for p in services[svc]["spec"]["ports"]], name)

    def test_prometheus_configmap_is_generated_offline(self):
        kubectl = need("kubectl", "kubernetes-client")
        r = run([kubectl, "create", "configmap", "reel-prometheus", "--namespace", "reel", "--dry-run=client",
                 "-o", "yaml"] + [f"--from-file={os.path.join(du.PROM, f)}"
                                  for f in ("kubernetes.yml", "recording.rules.yml", "alerts.rules.yml")])
        self.assertEqual(r.returncode, 0, r.stderr)
        cm = yaml.safe_load(r.stdout)
        self.assertEqual(sorted(cm["data"]), ["alerts.rules.yml", "kubernetes.yml", "recording.rules.yml"])


class Compose(unittest.TestCase):
    def compose_config(self, path):
        tool = need("docker-compose", "docker-compose")
        return run([tool, "-f", path, "config"], cwd=os.path.dirname(path))

    def test_compose_file_matches_the_compose_schema(self):
        r = self.compose_config(COMPOSE)
        self.assertEqual(r.returncode, 0, r.stderr)
        conf = yaml.safe_load(r.stdout)
        self.assertTrue({"coordinator", "worker-gpu0", "prometheus", "grafana"} <= set(conf["services"]))
        gpu = conf["services"]["worker-gpu0"]["deploy"]["resources"]["reservations"]["devices"][0]
        self.assertEqual(gpu["capabilities"], ["gpu"])

    def test_a_misspelt_key_fails_the_schema_check(self):
        with open(COMPOSE) as f:
            text = f.read()
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "compose.yaml")
            with open(path, "w") as f:
                f.write(text.replace("capabilities: [gpu]", "capabilitys: [gpu]", 1))
            r = self.compose_config(path)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("capabilitys", r.stderr)

    def test_reel_commands_use_real_flags_and_prometheus_scrapes_every_worker(self):
        with open(COMPOSE) as f:
            conf = yaml.safe_load(f)
        with open(os.path.join(du.PROM, "prometheus.yml")) as f:
            prom = yaml.safe_load(f)
        targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
        for name, svc in conf["services"].items():
            if "prom" in name or "grafana" in name:
                continue
            cmd = [os.path.expandvars(str(a)) for a in svc["command"]]
            self.assertEqual(du.unknown_flags(REEL, cmd) + du.listen_problems(cmd), [], f"service {name}: {cmd}")
            check = svc.get("healthcheck", {}).get("test", [])
            if check[1:2] == ["reel"]:
                self.assertEqual(du.unknown_flags(REEL, check[2:]), [], f"service {name} healthcheck: {check}")
            metrics = cmd[cmd.index("--metrics") + 1].split(":")[-1]
            if svc.get("profiles"):
                continue
            self.assertIn(f"{svc.get('hostname', name)}:{metrics}", targets, f"prometheus.yml does not scrape {name}")
        for vol in conf["services"]["prometheus"]["volumes"] + conf["services"]["grafana"]["volumes"]:
            src = vol.split(":")[0]
            if src.startswith("."):
                self.assertTrue(os.path.isdir(os.path.join(os.path.dirname(COMPOSE), src)), vol)


class Kubernetes(unittest.TestCase):
    def test_manifests_match_the_kubernetes_schema(self):
        try:
            import k8s_schema
        except ImportError:
            self.skipTest("python3-kubernetes not installed (scripts/install_deps.sh installs it)")
        docs = k8s_docs()
        self.assertGreaterEqual(len(docs), 7)
        errors = [e for where, d in docs for e in k8s_schema.validate(d, where)]
        self.assertEqual(errors, [])

    def test_the_schema_check_finds_a_misspelt_field_a_wrong_type_and_a_missing_port(self):
        try:
            import k8s_schema
        except ImportError:
            self.skipTest("python3-kubernetes not installed (scripts/install_deps.sh installs it)")
        with open(os.path.join(K8S, "coordinator.yaml")) as f:
            text = f.read()
        bad = (text.replace("readinessProbe:", "readynessProbe:", 1).replace("containerPort: 9464", 'containerPort: "x"')
               .replace("grpc: {port: 7070}", "grpc: {service: x}", 2))
        errors = [e for i, d in enumerate(yaml.safe_load_all(bad)) for e in k8s_schema.validate(d, f"#{i}")]
        joined = "\n".join(errors)
        self.assertIn("readynessProbe: unknown field of V1Container", joined)
        self.assertIn("containerPort: expected an integer", joined)
        self.assertIn("livenessProbe.grpc.port: required by V1GRPCAction", joined)

    def test_kustomize_renders_every_manifest_into_the_namespace(self):
        kubectl = need("kubectl", "kubernetes-client")
        r = run([kubectl, "kustomize", K8S])
        self.assertEqual(r.returncode, 0, r.stderr)
        rendered = [d for d in yaml.safe_load_all(r.stdout) if d]
        self.assertEqual(len(rendered), len(k8s_docs()))
        for d in rendered:
            if d["kind"] != "Namespace":
                self.assertEqual(d["metadata"].get("namespace"), "reel", d["metadata"]["name"])

    def test_services_select_pods_and_probes_and_ports_name_container_ports(self):
        docs = [d for _, d in k8s_docs()]
        pods = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]
        for svc in (d for d in docs if d["kind"] == "Service"):
            sel = svc["spec"]["selector"]
            chosen = [p for p in pods if sel.items() <= p["spec"]["template"]["metadata"]["labels"].items()]
            self.assertTrue(chosen, f"Service {svc['metadata']['name']} selects no pod")
            for port in svc["spec"]["ports"]:
                for p in chosen:
                    names = {cp.get("name") for c in p["spec"]["template"]["spec"]["containers"] for cp in c["ports"]}
                    self.assertIn(port["targetPort"], names, f"{svc['metadata']['name']} -> {p['metadata']['name']}")
        for p in pods:
            self.assertTrue(p["spec"]["selector"]["matchLabels"].items() <=
                            p["spec"]["template"]["metadata"]["labels"].items(), p["metadata"]["name"])
            tmpl = p["spec"]["template"]
            for c in tmpl["spec"]["containers"]:
                ports = {cp["containerPort"] for cp in c["ports"]}
                for probe in ("livenessProbe", "readinessProbe"):
                    self.assertIn(c[probe]["grpc"]["port"], ports, f"{p['metadata']['name']} {probe}")
                self.assertIn(int(tmpl["metadata"]["annotations"]["prometheus.io/port"]), ports)
                args = [re.sub(r"\$\((\w+)\)", "x", a) for a in c["args"]]
                self.assertEqual(du.unknown_flags(REEL, args) + du.listen_problems([a.replace("x:", "10.0.0.9:") for a in args]),
                                 [], f"{p['metadata']['name']}: {c['args']}")
                listen = args[args.index("--listen") + 1] if "--listen" in args else ""
                self.assertIn(int(listen.split(":")[-1]), ports, f"{p['metadata']['name']} --listen {listen}")
            gpu = c["resources"].get("limits", {}).get("nvidia.com/gpu")
            if p["kind"] == "StatefulSet":
                self.assertEqual(gpu, 1, "a GPU worker requests one GPU")


class Systemd(unittest.TestCase):
    def test_units_pass_systemd_analyze_verify(self):
        tool = need("systemd-analyze", "systemd")
        with tempfile.TemporaryDirectory() as d:
            for unit in glob.glob(os.path.join(SYSTEMD, "*.service")):
                with open(unit) as f:
                    text = f.read().replace("/usr/local/bin/reel", REEL)
                with open(os.path.join(d, os.path.basename(unit)), "w") as f:
                    f.write(text)
            for unit in ("reel-coordinator.service", "reel-worker@0.service"):
                r = run([tool, "verify", "--man=no", os.path.join(d, unit)])
                self.assertEqual((r.returncode, r.stdout + r.stderr), (0, ""), unit)
            with open(os.path.join(d, "reel-worker@.service"), "a") as f:
                f.write("Restartt=always\n")
            r = run([tool, "verify", "--man=no", os.path.join(d, "reel-worker@1.service")])
            self.assertIn("Restartt", r.stdout + r.stderr, "verify did not report an unknown key")

    def exec_start(self, unit, instance, env):
        """The unit's ExecStart with systemd's %i and $$ expanded, run by /bin/sh with `reel` replaced by a stub
        that prints its arguments one a line."""
        with open(os.path.join(SYSTEMD, unit)) as f:
            line = next(l for l in f.read().splitlines() if l.startswith("ExecStart="))
        cmd = line[len("ExecStart="):].replace("%i", str(instance))
        for k, v in env.items():  # systemd's own ${VAR} and $VAR expansion (unquoted: split into words)
            cmd = re.sub(r"(?<!\$)\$(" + k + r"\b|\{" + k + r"\})", v, cmd)
        cmd = cmd.replace("$$", "$")
        with tempfile.TemporaryDirectory() as d:
            stub = os.path.join(d, "reel")
            with open(stub, "w") as f:
                f.write('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
            os.chmod(stub, 0o755)
            argv = shlex.split(cmd.replace("/usr/local/bin/reel", stub))
            r = run(argv, env={**os.environ, **env})
            self.assertEqual(r.returncode, 0, r.stderr)
            return r.stdout.splitlines()

    def test_unit_command_lines_expand_to_real_flags(self):
        env = {"REEL_COORDINATOR": "10.0.0.1:7070", "REEL_WORKER_ARGS": "--threads 8",
               "REEL_COORDINATOR_ARGS": "--model tiny", "REEL_LISTEN_HOST": "127.0.0.1"}
        worker = self.exec_start("reel-worker@.service", 1, env)
        self.assertEqual(du.unknown_flags(REEL, worker) + du.listen_problems(worker), [], worker)
        self.assertEqual(worker[worker.index("--listen") + 1], "127.0.0.1:7101")
        self.assertEqual(worker[worker.index("--metrics") + 1], "0.0.0.0:9466")
        self.assertEqual(worker[worker.index("--coordinator") + 1], "10.0.0.1:7070")
        self.assertEqual(worker[-2:], ["--threads", "8"])
        coord = self.exec_start("reel-coordinator.service", 0, env)
        self.assertEqual(du.unknown_flags(REEL, coord) + du.listen_problems(coord), [], coord)
        self.assertEqual(coord[-2:], ["--model", "tiny"])
        self.assertEqual(coord[coord.index("--listen") + 1], "127.0.0.1:7070")
        with open(os.path.join(SYSTEMD, "reel.default")) as f:
            defaults = dict(re.findall(r"^(\w+)=\"?([^\"\n]*)\"?$", f.read(), re.M))
        self.assertEqual(sorted(defaults), sorted(env))


class DockerfileCommand(unittest.TestCase):
    def test_default_command_uses_real_flags(self):
        with open(os.path.join(du.DEPLOY, "docker", "Dockerfile")) as f:
            cmd = json.loads(re.search(r"^CMD (\[.*\])$", f.read(), re.M).group(1))
        self.assertEqual(du.unknown_flags(REEL, cmd) + du.listen_problems(cmd), [], cmd)
        self.assertEqual(du.listen_problems(["serve", "--listen", "0.0.0.0:7070"]), [
            "--listen 0.0.0.0:7070: not loopback, and neither --insecure nor TLS with a token: reel refuses to start"])


class Dashboard(unittest.TestCase):
    def test_dashboard_is_well_formed_and_names_only_recorded_rules(self):
        with open(du.DASHBOARD) as f:
            dash = json.load(f)
        ids = [p["id"] for p in dash["panels"]]
        self.assertEqual(len(ids), len(set(ids)), "panel ids repeat")
        self.assertEqual(dash["uid"], "reel-overview")
        variables = {v["name"] for v in dash["templating"]["list"]}
        for p in dash["panels"]:
            if p["type"] == "row":
                continue
            self.assertTrue(p["targets"], p["title"])
            self.assertEqual(p["datasource"]["uid"], "${datasource}", p["title"])
            for t in p["targets"]:
                for v in re.findall(r"\$(?:\{)?(\w+)", t["expr"]):
                    self.assertTrue(v in variables or v.startswith("__"), f"{p['title']}: ${v}")
        recorded = du.recorded_names()
        for name, wheres in du.names_used(du.expressions()).items():
            if ":" in name:
                self.assertIn(name, recorded, wheres)
        with open(os.path.join(du.DEPLOY, "grafana", "provisioning", "datasources", "prometheus.yaml")) as f:
            ds = yaml.safe_load(f)["datasources"][0]
        self.assertEqual(ds["uid"], dash["templating"]["list"][0]["current"]["value"])

    def test_dashboard_covers_the_issue_panels(self):
        exprs = " ".join(e for w, e in du.expressions() if w.startswith("dashboard"))
        for needle in ("reel:frames_per_second", "reel_queue_depth", "reel_job_queue_wait_seconds_bucket",
                       "reel_job_duration_seconds_bucket", "reel_job_stage_duration_seconds_bucket",
                       "reel_worker_device_memory_bytes", "reel_host_pinned_bytes", "reel_worker_host_memory_bytes",
                       "reel:step_duration_seconds", "reel_workers", "reel_device_oom_total"):
            self.assertIn(needle, exprs)
        self.assertIn("histogram_quantile", exprs)


if __name__ == "__main__":
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-"):
        REEL = os.path.abspath(sys.argv.pop(1))
    result = unittest.main(verbosity=2, exit=False).result
    if result.skipped and result.wasSuccessful() and len(result.skipped) >= result.testsRun:
        print("SKIPPED: every check was skipped (see the reasons above)")
    sys.exit(0 if result.wasSuccessful() else 1)
