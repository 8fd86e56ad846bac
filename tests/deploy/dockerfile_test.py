#!/usr/bin/python3
"""deploy/docker/Dockerfile installs exactly scripts/install_deps.sh's Debian packages in its build stage (by running
that script) and, in its runtime stage, only the list deploy/docker/runtime_packages.sh derives from the built
binary; that list lies within install_deps.sh's packages and their dependencies. Usage: dockerfile_test.py REEL_BINARY
(with REEL_SOURCE_DIR set)."""
import os
import re
import shlex
import subprocess
import sys
import tempfile
import unittest

SRC = os.environ.get("REEL_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
REEL = None
DOCKERFILE = os.path.join(SRC, "deploy", "docker", "Dockerfile")
INSTALL_DEPS = os.path.join(SRC, "scripts", "install_deps.sh")
RUNTIME_PACKAGES = os.path.join(SRC, "deploy", "docker", "runtime_packages.sh")


def read(path):
    with open(path) as f:
        return f.read()


def instructions(text):
    """[(stage, INSTRUCTION, arguments)] with continuation lines joined and comments dropped."""
    out, stage, buf = [], None, ""
    for line in text.splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        word = word.upper()
        if word == "FROM":
            m = re.search(r"\bAS\s+(\S+)", rest, re.I)
            stage = m.group(1) if m else rest.strip()
        out.append((stage, word, rest.strip()))
        buf = ""
    return out


def problems(text):
    """What makes a Dockerfile install packages other than install_deps.sh's and the derived runtime list."""
    found = []
    ins = instructions(text)
    runs = [(stage, args) for stage, word, args in ins if word == "RUN"]
    if not any(w == "COPY" and "scripts/install_deps.sh" in a for _, w, a in ins):
        found.append("no stage copies scripts/install_deps.sh")
    if not any(re.search(r"(^|[\s/])install_deps\.sh(\s|&&|$)", a) for _, a in runs):
        found.append("no RUN runs install_deps.sh")
    if not any("runtime_packages.sh" in a and "runtime-packages.txt" in a for _, a in runs):
        found.append("no RUN derives runtime-packages.txt with deploy/docker/runtime_packages.sh")
    for w in ("ADD",):
        for _, word, a in ins:
            if word == w and re.search(r"https?://", a):
                found.append(f"ADD fetches {a}")
    for stage, cmd in runs:
        for part in re.split(r"&&|\|\||;|\|", cmd):
            words = shlex.split(part, posix=True) if part.strip() else []
            if any(x in words for x in ("dpkg",)) and "-i" in words:
                found.append(f"stage {stage}: dpkg -i installs a package file: {part.strip()}")
            for tool in ("pip", "pip3", "curl", "wget"):
                if tool in words:
                    found.append(f"stage {stage}: {tool} fetches from outside Debian: {part.strip()}")
            for i, wd in enumerate(words):
                if wd in ("apt-get", "apt", "aptitude") and "install" in words[i + 1:]:
                    named = [x for x in words[words.index("install", i) + 1:] if not x.startswith("-")]
                    if named:
                        found.append(f"stage {stage}: apt installs packages by name: {' '.join(named)}")
                    if "xargs" not in words or "/usr/share/reel/runtime-packages.txt" not in words:
                        found.append(f"stage {stage}: apt install not fed from runtime-packages.txt: {part.strip()}")
    return found


def install_deps_packages():
    text = read(INSTALL_DEPS)
    m = re.search(r"^PACKAGES=\((.*?)^\)", text, re.S | re.M)
    if not m:
        raise AssertionError(f"{INSTALL_DEPS}: no PACKAGES=( ... ) array")
    return set(shlex.split(m.group(1), comments=True))


def installed_closure(roots):
    """Installed packages reachable from roots through Depends/Pre-Depends (every alternative that is installed)."""
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${Status}\t${Provides}\t${Depends}, ${Pre-Depends}\n"],
                         check=True, capture_output=True, text=True).stdout
    deps, provides = {}, {}
    for line in out.splitlines():
        name, status, prov, dep = line.split("\t")
        if "installed" not in status.split():
            continue
        deps[name] = [re.sub(r"[\s(:].*", "", alt.strip()) for alt in re.split(r"[,|]", dep) if alt.strip()]
        for p in prov.split(","):
            if p.strip():
                provides.setdefault(re.sub(r"[\s(].*", "", p.strip()), []).append(name)
    seen, todo = set(), [r for r in roots if r in deps]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        for d in deps.get(p, []):
            for q in ([d] if d in deps else []) + provides.get(d, []):
                if q not in seen:
                    todo.append(q)
    return seen


class Dockerfile(unittest.TestCase):
    def test_packages_come_from_install_deps_and_the_derived_list_only(self):
        self.assertEqual(problems(read(DOCKERFILE)), [])

    def test_the_check_fails_on_a_package_named_in_the_dockerfile(self):
        text = read(DOCKERFILE)
        bad = text.replace("RUN apt-get update -qq", "RUN apt-get update -qq && apt-get install -y curl", 1)
        self.assertNotEqual(bad, text, "the runtime stage's apt-get update line moved; update this test")
        self.assertTrue(any("curl" in p for p in problems(bad)), problems(bad))
        no_script = re.sub(r"RUN /tmp/install_deps.sh[^\n]*\n", "RUN true\n", text)
        self.assertIn("no RUN runs install_deps.sh", problems(no_script))

    def test_the_runtime_list_is_derived_from_the_binary_within_install_deps_packages(self):
        if not REEL or not os.access(REEL, os.X_OK):
            self.skipTest(f"reel binary {REEL!r}: not built")
        r = subprocess.run([RUNTIME_PACKAGES, REEL], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        derived = set(r.stdout.split())
        self.assertIn("libtorch1.13", derived)
        self.assertIn("libgrpc++1.51", derived)
        self.assertIn("libopenblas0-openmp", derived, "the BLAS install_deps.sh chooses must be in the image")
        roots = install_deps_packages()
        missing = [p for p in roots if subprocess.run(["dpkg-query", "-W", p], capture_output=True).returncode]
        if missing:
            self.skipTest(f"install_deps.sh's packages are not all installed here ({' '.join(missing)})")
        closure = installed_closure(roots)
        self.assertIn("libtorch1.13", closure)
        self.assertEqual(sorted(derived - closure), [], "runtime packages outside install_deps.sh's dependencies")
        # Libraries that travel with the binary (the CUDA image's LibTorch) are not looked up.
        openblas = "/usr/lib/x86_64-linux-gnu/openblas-openmp"
        r = subprocess.run([RUNTIME_PACKAGES, "--bundled", openblas, REEL], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(set(r.stdout.split()), derived - {"libopenblas0-openmp"})

    def test_the_runtime_list_installs_on_a_bare_system_with_openblas(self):
        if not REEL or not os.access(REEL, os.X_OK):
            self.skipTest(f"reel binary {REEL!r}: not built")
        policy = subprocess.run(["apt-cache", "policy", "libtorch1.13"], capture_output=True, text=True).stdout
        if "Candidate: (none)" in policy or "Candidate:" not in policy:
            self.skipTest("apt has no package lists (run apt-get update)")
        derived = subprocess.run([RUNTIME_PACKAGES, REEL], capture_output=True, text=True, check=True).stdout.split()
        with tempfile.NamedTemporaryFile() as empty:  # a dpkg status with nothing installed: what a bare image needs
            r = subprocess.run(["apt-get", "-s", "-o", f"Dir::State::status={empty.name}", "install",
                                "--no-install-recommends"] + derived, capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr)
        installed = set(re.findall(r"^Inst (\S+)", r.stdout, re.M))
        self.assertIn("libopenblas0-openmp", installed)
        self.assertNotIn("libblas3", installed, "the reference BLAS would be installed beside OpenBLAS")
        self.assertNotIn("libtorch-dev", installed)

    def test_runtime_packages_refuses_a_missing_binary(self):
        r = subprocess.run([RUNTIME_PACKAGES, "/nonexistent/reel"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 2)
        self.assertIn("/nonexistent/reel", r.stderr)


if __name__ == "__main__":
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-"):
        REEL = sys.argv.pop(1)
    result = unittest.main(verbosity=2, exit=False).result
    if result.skipped and result.wasSuccessful() and len(result.skipped) >= result.testsRun:
        print("SKIPPED: every check was skipped (see the reasons above)")
    sys.exit(0 if result.wasSuccessful() else 1)
