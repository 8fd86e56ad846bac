"""Helpers shared by the deploy/ tests: the reel CLI's real flags, the metric names and label matchers that the
dashboard and the Prometheus rules use, and the sample names and labels of a scrape."""
import json
import os
import re
import subprocess

import yaml

SRC = os.path.abspath(os.environ.get("REEL_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", "..")))
DEPLOY = os.path.join(SRC, "deploy")
PROM = os.path.join(DEPLOY, "prometheus")
DASHBOARD = os.path.join(DEPLOY, "grafana", "dashboards", "reel.json")
RULE_FILES = [os.path.join(PROM, "recording.rules.yml"), os.path.join(PROM, "alerts.rules.yml")]

_flags = {}


def reel_flags(binary, sub):
    """The long options `reel SUB --help` lists."""
    if (binary, sub) not in _flags:
        out = subprocess.run([binary, sub, "--help"], capture_output=True, text=True, check=True).stdout
        _flags[(binary, sub)] = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", out)) | {"--help"}
    return _flags[(binary, sub)]


def unknown_flags(binary, argv):
    """Flags in a reel command line (argv[0] the subcommand) that `reel SUB --help` does not list."""
    sub = argv[0]
    if sub.startswith("-"):
        return [f"no subcommand before {sub}"]
    known = reel_flags(binary, sub)
    return [a.split("=")[0] for a in argv[1:] if a.startswith("--") and a.split("=")[0] not in known]


def expressions():
    """[(where, PromQL)] for every dashboard target and every rule."""
    out = []
    with open(DASHBOARD) as f:
        dash = json.load(f)
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((f"dashboard panel '{p['title']}' {t['refId']}", t["expr"]))
    for path in RULE_FILES:
        with open(path) as f:
            for g in yaml.safe_load(f)["groups"]:
                for r in g["rules"]:
                    out.append((f"{os.path.basename(path)} {r.get('record') or r.get('alert')}", r["expr"]))
    return out


def recorded_names():
    with open(RULE_FILES[0]) as f:
        return {r["record"] for g in yaml.safe_load(f)["groups"] for r in g["rules"] if "record" in r}


METRIC = re.compile(r"(?<![\w:])(reel_[a-z0-9_]+|reel:[a-z0-9_:]+)")
SELECTOR = re.compile(r"(?<![\w:])(reel_[a-z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*\"([^\"]*)\"")


def names_used(exprs):
    """{name: [where]} of every reel_* metric and reel:* recording rule named in the expressions."""
    used = {}
    for where, e in exprs:
        for n in METRIC.findall(e):
            used.setdefault(n, []).append(where)
    return used


def parse_scrape(text):
    """{sample name: [label dict]} of a text exposition."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][\w:]*)(\{(.*)\})?\s", line)
        if not m:
            continue
        labels = dict((k, v) for k, v in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        samples.setdefault(m.group(1), []).append(labels)
    return samples


def missing_from_scrape(exprs, samples, recorded):
    """Problems, one line each: a reel_* name no scraped sample has (a histogram needs _bucket/_sum/_count), a
    reel:* name no recording rule defines, a label matcher no scraped series of that metric satisfies."""
    problems = []
    for name, wheres in sorted(names_used(exprs).items()):
        if ":" in name:
            if name not in recorded:
                problems.append(f"{name} (in {wheres[0]}): no recording rule defines it")
        elif name not in samples:
            problems.append(f"{name} (in {wheres[0]}): not in any scrape")
    for where, e in exprs:
        for name, body in SELECTOR.findall(e):
            for label, op, value in MATCHER.findall(body):
                series = samples.get(name, [])
                values = {s[label] for s in series if label in s}
                if op in ("=", "=~") and value:
                    pattern = re.escape(value) if op == "=" else value
                    if not any(re.fullmatch(pattern, v) for v in values):
                        problems.append(f"{name}{{{label}{op}\"{value}\"}} (in {where}): no scraped series matches; "
                                        f"{label} values seen: {sorted(values) or 'none'}")
    return problems


def listen_problems(argv):
    """The rule `reel coordinator|worker|serve` apply at start (security/transport_security.cc CheckListen): a
    --listen beyond loopback needs --tls-cert, --tls-key, --tls-ca and --token-file, or --insecure."""
    if "--listen" not in argv:
        return []
    listen = argv[argv.index("--listen") + 1]
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host in ("localhost", "::1") or host.startswith("127."):
        return []
    if "--insecure" in argv or all(f in argv for f in ("--tls-cert", "--tls-key", "--tls-ca", "--token-file")):
        return []
    return [f"--listen {listen}: not loopback, and neither --insecure nor TLS with a token: reel refuses to start"]
