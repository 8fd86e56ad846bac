#!/usr/bin/python3
"""deploy/docker/Dockerfile (the CPU image). Its build stage installs exactly scripts/install_deps.sh's Debian packages
and Python environment, by running that script beside the scripts/requirements.txt it reads (pip, curl and the like
appear nowhere else), and builds `reel` against the CPU half of that environment's LibTorch
(cmake/torch_cpu_only.cmake, which CMakeLists.txt includes with REEL_WITH_CUDA=OFF). Its runtime stage gets the LibTorch libraries the binary loads, copied out of the
environment into /opt/reel/lib, and installs only the Debian packages deploy/docker/runtime_packages.sh derives from
the binary, all within install_deps.sh's packages and their dependencies. A small program built the way the image
builds `reel` shows what those libraries are. Usage: dockerfile_test.py REEL_BINARY (with REEL_SOURCE_DIR set)."""
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import unittest

SRC = os.path.abspath(os.environ.get("REEL_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", "..")))
REEL = None
DOCKERFILE = os.path.join(SRC, "deploy", "docker", "Dockerfile")
INSTALL_DEPS = os.path.join(SRC, "scripts", "install_deps.sh")
RUNTIME_PACKAGES = os.path.join(SRC, "deploy", "docker", "runtime_packages.sh")
CPU_ONLY = os.path.join(SRC, "cmake", "torch_cpu_only.cmake")
BUNDLE = "/opt/reel/lib"  # where the image keeps the libraries that travel with the binary
# Tools that install software from outside Debian's archive. pip is run only by install_deps.sh.
FETCHERS = re.compile(r"^(pip[0-9.]*|curl|wget|uv|conda|mamba|micromamba|easy_install|pipx)$")


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


def copy_sources(args):
    """The source paths of a COPY/ADD (its words less the options and the destination)."""
    words = [w for w in shlex.split(args) if not w.startswith("--")]
    return words[:-1]


def simple_commands(cmd):
    """The words of each simple command in a shell command line: split at && || | ; & and parentheses (so the
    commands inside $( ) count too), quotes kept whole."""
    lex = shlex.shlex(cmd, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    out, cur = [], []
    for tok in lex:
        if tok and set(tok) <= set("&|;()"):
            out.append(cur)
            cur = []
        else:
            cur.append(tok)
    return [c for c in out + [cur] if c]


def problems(text):
    """What makes a Dockerfile install software other than install_deps.sh's and the derived runtime list."""
    found = []
    ins = instructions(text)
    runs = [(stage, args) for stage, word, args in ins if word == "RUN"]
    if not any(w == "COPY" and "scripts/install_deps.sh" in copy_sources(a) for _, w, a in ins):
        found.append("no stage copies scripts/install_deps.sh")
    if not any(re.search(r"(^|[\s/])install_deps\.sh(\s|&&|$)", a) for _, a in runs):
        found.append("no RUN runs install_deps.sh")
    # install_deps.sh reads scripts/requirements.txt from the folder above its own: it must arrive with the script
    # (the same COPY, hence the same destination) or with the whole context, before the RUN.
    copied, stages = {}, set()
    for stage, word, args in ins:
        if word == "FROM":
            stages.add(stage)
            copied[stage] = set()
        elif word == "COPY" and not args.startswith("--from"):
            srcs = copy_sources(args)
            if "." in srcs or "./" in srcs:
                copied[stage].add("context")
            elif "scripts/install_deps.sh" in srcs and "scripts/requirements.txt" in srcs:
                copied[stage].add("script and requirements")
        elif word == "RUN" and re.search(r"(^|[\s/])install_deps\.sh(\s|&&|$)", args) and not copied.get(stage):
            found.append(f"stage {stage}: install_deps.sh runs without scripts/requirements.txt copied beside it")
        if word in ("COPY", "ADD"):
            m = re.search(r"--from=(\S+)", args)
            if m and m.group(1) not in stages:
                found.append(f"stage {stage}: {word} --from={m.group(1)} takes files from an image, not a stage")
    if not any("runtime_packages.sh" in a and "runtime-packages.txt" in a for _, a in runs):
        found.append("no RUN derives runtime-packages.txt with deploy/docker/runtime_packages.sh")
    for _, word, a in ins:
        if word == "ADD" and re.search(r"https?://|git@", a):
            found.append(f"ADD fetches {a}")
    for stage, cmd in runs:
        for words in simple_commands(cmd):
            part = shlex.join(words)
            names = [w if w.startswith("-") else os.path.basename(w) for w in words]
            if "dpkg" in names and "-i" in words:
                found.append(f"stage {stage}: dpkg -i installs a package file: {part}")
            for i, name in enumerate(names):
                if FETCHERS.match(name) or (name == "-m" and i + 1 < len(names) and FETCHERS.match(names[i + 1])):
                    found.append(f"stage {stage}: {name} fetches from outside Debian: {part}")
            for i, wd in enumerate(words):
                if wd in ("apt-get", "apt", "aptitude") and "install" in words[i + 1:]:
                    named = [x for x in words[words.index("install", i) + 1:] if not x.startswith("-")]
                    if named:
                        found.append(f"stage {stage}: apt installs packages by name: {' '.join(named)}")
                    if "xargs" not in words or "/usr/share/reel/runtime-packages.txt" not in words:
                        found.append(f"stage {stage}: apt install not fed from runtime-packages.txt: {part}")
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


def ldd(binary, env=None):
    """{soname: resolved path or None} of a binary's whole dependency tree."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True, env=env).stdout
    libs = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+) => (\S+|not found)", line)
        if m:
            libs[m.group(1)] = None if m.group(2) == "not found" else m.group(2)
    return libs


def needed(binary):
    out = subprocess.run(["readelf", "-d", binary], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\(NEEDED\).*\[(.*)\]", out), re.findall(r"\((?:RUNPATH|RPATH)\).*\[(.*)\]", out)


def torch_dir():
    """The torch package folder Reel was built against: from the built binary's libtorch_cpu.so, else the project's
    Python environment ($REEL_VENV or .venv)."""
    if REEL and os.access(REEL, os.X_OK):
        path = ldd(REEL).get("libtorch_cpu.so")
        if path:
            return os.path.dirname(os.path.dirname(os.path.realpath(path)))
    venv = os.environ.get("REEL_VENV", os.path.join(SRC, ".venv"))
    found = glob.glob(os.path.join(venv, "lib", "python3*", "site-packages", "torch", "share", "cmake", "Torch"))
    return os.path.dirname(os.path.dirname(os.path.dirname(found[0]))) if found else None


def bundled_args(binary):
    """--bundled for what travels with a binary run in place: the Python environment's site-packages (LibTorch and the
    nvidia-* libraries) and, for a build with CUDA where a CUDA toolkit is installed (REEL_WITH_CUDA=AUTO finds it),
    the toolkit's folder of the libcudart it links (a CUDA image ships the wheel's)."""
    site = os.path.dirname(torch_dir())
    dirs = [site]
    for name, path in ldd(binary).items():
        if name.startswith("libcudart.so") and path and not os.path.realpath(path).startswith(site + "/"):
            dirs.append(os.path.dirname(os.path.realpath(path)))
    return [a for d in dirs for a in ("--bundled", d)]


def need_binary(test):
    if not REEL or not os.access(REEL, os.X_OK):
        test.skipTest(f"reel binary {REEL!r}: not built")


def runtime_packages(*args):
    return subprocess.run([RUNTIME_PACKAGES, *args], capture_output=True, text=True)


class Dockerfile(unittest.TestCase):
    def test_software_comes_from_install_deps_and_the_derived_list_only(self):
        self.assertEqual(problems(read(DOCKERFILE)), [])

    def test_the_check_fails_on_software_installed_another_way(self):
        text = read(DOCKERFILE)

        def changed(old, new, count=1):
            bad = text.replace(old, new, count)
            self.assertNotEqual(bad, text, f"{old!r} is no longer in the Dockerfile; update this test")
            return problems(bad)

        p = changed("RUN apt-get update -qq", "RUN apt-get update -qq && apt-get install -y curl")
        self.assertTrue(any("curl" in x for x in p), p)
        no_script = re.sub(r"\n(RUN (--\S+\s+|\\\s+)*)scripts/install_deps\.sh[^\n]*\n", r"\n\1true\n", text)
        self.assertNotEqual(no_script, text, "the RUN of install_deps.sh moved; update this test")
        self.assertIn("no RUN runs install_deps.sh", problems(no_script))
        for run in ("RUN /src/.venv/bin/pip install torch==2.11.0", "RUN python3 -m pip install diffusers",
                    "RUN .venv/bin/python -m pip install -r scripts/requirements.txt",
                    "RUN curl -fsSL https://download.pytorch.org/libtorch/cpu/libtorch.zip -o /tmp/t.zip",
                    "RUN apt-get install -y ./cuda-keyring.deb", "RUN dpkg -i /tmp/cuda-keyring.deb"):
            p = changed("COPY . .\n", f"COPY . .\n{run}\n")
            self.assertTrue(any("fetches" in x or "by name" in x or "dpkg -i" in x for x in p), (run, p))
        p = changed("COPY scripts/install_deps.sh scripts/requirements.txt scripts/", "COPY scripts/install_deps.sh scripts/")
        self.assertTrue(any("requirements.txt" in x for x in p), p)
        p = changed("COPY --from=build /opt/reel/lib /opt/reel/lib",
                    "COPY --from=pytorch/pytorch:2.11.0-cuda13.0-cudnn9-runtime /opt/conda /opt/conda")
        self.assertTrue(any("from an image" in x for x in p), p)

    def test_the_build_links_libtorch_cpu_and_the_runtime_gets_the_bundle(self):
        ins = instructions(read(DOCKERFILE))
        stages = [s for s, w, _ in ins if w == "FROM"]
        self.assertEqual(stages, ["build", "runtime"])
        workdir = [a for s, w, a in ins if s == "build" and w == "WORKDIR"][0]
        configure = [a for s, w, a in ins if s == "build" and w == "RUN" and "cmake -S" in a]
        self.assertEqual(len(configure), 1, configure)
        words = shlex.split(configure[0])
        defs = dict(w[2:].split("=", 1) for w in words if w.startswith("-D") and "=" in w)
        # The environment install_deps.sh made (WORKDIR/.venv, the script's default) is the one configured against.
        self.assertNotIn("REEL_VENV", read(DOCKERFILE))
        self.assertEqual(defs.get("REEL_PYTHON"), os.path.join(workdir, ".venv", "bin", "python"))
        # REEL_WITH_CUDA=OFF makes CMakeLists.txt include torch_cpu_only.cmake before find_package(Torch).
        self.assertTrue(os.path.exists(CPU_ONLY))
        self.assertRegex(read(os.path.join(SRC, "CMakeLists.txt")), r'REEL_WITH_CUDA STREQUAL "OFF"[^\n]*\n[^\n]*\n\s*include\(cmake/torch_cpu_only\.cmake\)')
        self.assertEqual(defs.get("REEL_WITH_CUDA"), "OFF")
        self.assertEqual((defs.get("CMAKE_BUILD_WITH_INSTALL_RPATH"), defs.get("CMAKE_INSTALL_RPATH")), ("ON", BUNDLE))
        self.assertIn(f"runtime_packages.sh --bundled {BUNDLE} ", configure[0])
        self.assertIn(("runtime", "COPY", f"--from=build {BUNDLE} {BUNDLE}"), ins)


class CpuOnlyLibTorch(unittest.TestCase):
    """A program built as the image builds `reel` (torch_cpu_only.cmake, REEL_WITH_CUDA=OFF, Reel's link rule, RUNPATH
    the bundle folder): its configure does not touch CUDA, it links libtorch_cpu.so alone, the libraries it loads from
    the Python environment copied into the bundle folder are enough to run it, and what else it needs is Debian's."""

    PROGRAM = r"""
#include <ATen/core/Tensor.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/randn.h>
#include <ATen/Parallel.h>
#include <cstdio>
int main() {
  at::Tensor a = at::randn({128, 128});
  std::printf("%d %.3f\n", at::get_num_threads(), at::matmul(a, a.t()).trace().item<double>());
}
"""

    def configure(self, tmp, extra):
        torch = torch_dir()
        if not torch:
            self.skipTest("no LibTorch: neither the reel binary's nor a Python environment's (scripts/install_deps.sh)")
        for tool in ("cmake", "ninja", "c++", "readelf"):
            if not shutil.which(tool):
                self.skipTest(f"{tool} is not installed (scripts/install_deps.sh)")
        # Reel's link rule (libstdc++ first, then --as-needed), as CMakeLists.txt writes it.
        rule = re.search(r'^string\(REPLACE "<LINK_FLAGS>".*?\)\s*$', read(os.path.join(SRC, "CMakeLists.txt")),
                         re.S | re.M)
        with open(os.path.join(tmp, "CMakeLists.txt"), "w") as f:
            f.write("cmake_minimum_required(VERSION 3.25)\nproject(reel LANGUAGES C CXX)\n"
                    "set(CMAKE_CXX_STANDARD 17)\nset(TORCH_CUDA_ARCH_LIST \"8.0;9.0\")\n"
                    f"find_package(Torch REQUIRED)\n{rule.group(0) if rule else ''}\n"
                    "add_executable(prog prog.cc)\ntarget_link_libraries(prog ${TORCH_LIBRARIES})\n")
        with open(os.path.join(tmp, "prog.cc"), "w") as f:
            f.write(self.PROGRAM)
        return subprocess.run(["cmake", "-S", tmp, "-B", os.path.join(tmp, "b"), "-G", "Ninja",
                               "-DCMAKE_BUILD_TYPE=Release", f"-DCMAKE_PREFIX_PATH={torch}/share/cmake",
                               f"-DCMAKE_PROJECT_reel_INCLUDE={CPU_ONLY}"] + extra,
                              capture_output=True, text=True), torch

    def test_without_reel_with_cuda_off_it_refuses(self):
        with tempfile.TemporaryDirectory() as tmp:
            r, _ = self.configure(tmp, [])
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("-DREEL_WITH_CUDA=OFF", r.stdout + r.stderr)

    def test_a_program_built_as_the_image_builds_reel_runs_on_the_bundled_cpu_libraries(self):
        with tempfile.TemporaryDirectory() as tmp:
            bundle = os.path.join(tmp, "bundle")
            r, torch = self.configure(tmp, ["-DREEL_WITH_CUDA=OFF", "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
                                            f"-DCMAKE_INSTALL_RPATH={bundle}"])
            log = r.stdout + r.stderr
            self.assertEqual(r.returncode, 0, log[-3000:])
            self.assertIn("linking LibTorch's CPU libraries only", log)
            # The wheel's CUDA checks (public/cuda.cmake: nvcc, toolkit, cuDNN) never ran.
            for said in ("PyTorch: CUDA", "Found CUDA", "CUDA cannot be found", "cuDNN"):
                self.assertNotIn(said, log)
            with open(os.path.join(tmp, "b", "CMakeCache.txt")) as f:
                self.assertNotIn("CMAKE_CUDA_COMPILER:", f.read())
            r = subprocess.run(["cmake", "--build", os.path.join(tmp, "b")], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, (r.stdout + r.stderr)[-3000:])
            prog = os.path.join(tmp, "b", "prog")
            libs, runpath = needed(prog)
            self.assertIn("libtorch_cpu.so", libs)
            for lib in ("libtorch.so", "libtorch_cuda.so", "libc10_cuda.so"):
                self.assertNotIn(lib, libs)
            self.assertEqual(runpath, [bundle])
            # The Dockerfile's bundling: the libraries it loads from the Python environment, found there.
            site = os.path.dirname(torch)
            env = dict(os.environ, LD_LIBRARY_PATH=os.path.join(torch, "lib"))
            from_env = {n: p for n, p in ldd(prog, env).items() if p and os.path.realpath(p).startswith(site + "/")}
            os.makedirs(bundle)
            for path in from_env.values():
                shutil.copy(path, bundle)
            names = sorted(from_env)
            print(f"\n  the CPU image's LibTorch libraries: {' '.join(names)} "
                  f"({sum(os.path.getsize(p) for p in from_env.values()) >> 20} MiB)", file=sys.stderr)
            expected = [r"libc10\.so", r"libcudart\.so\.\d+", r"libcupti\.so\.\d+", r"libgomp\.so\.1", r"libtorch_cpu\.so"]
            self.assertEqual(len(names), len(expected), names)
            for pattern, name in zip(expected, names):
                self.assertRegex(name, "^" + pattern + "$", f"{names}: docs/DEPLOY.md lists them")
            env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
            after = ldd(prog, env)
            self.assertEqual([n for n, p in after.items() if not p], [], after)
            outside = {n: p for n, p in after.items() if os.path.realpath(p).startswith(site + "/")}
            self.assertEqual(outside, {}, "still loaded from the Python environment")
            for n in names:
                self.assertEqual(os.path.dirname(after[n]), bundle, n)
            r = runtime_packages("--bundled", bundle, prog)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertTrue(set(r.stdout.split()) <= installed_closure(install_deps_packages()), r.stdout)
            r = subprocess.run([prog], capture_output=True, text=True, env=env, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertRegex(r.stdout, r"^\d+ -?\d+\.\d+$")


class RuntimePackages(unittest.TestCase):
    def test_a_library_no_package_owns_is_refused_unless_bundled(self):
        need_binary(self)
        r = runtime_packages(REEL)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("no Debian package owns", r.stderr)

    def test_the_runtime_list_is_derived_from_the_binary_within_install_deps_packages(self):
        need_binary(self)
        r = runtime_packages(*bundled_args(REEL), REEL)
        self.assertEqual(r.returncode, 0, r.stderr)
        derived = set(r.stdout.split())
        self.assertIn("libgrpc++1.51", derived)
        self.assertIn("libavcodec59", derived)
        self.assertEqual(sorted(p for p in derived if p.startswith(("libtorch", "libopenblas", "libblas"))), [],
                         "LibTorch and its BLAS come from the Python environment, not from Debian")
        roots = install_deps_packages()
        missing = [p for p in roots if subprocess.run(["dpkg-query", "-W", p], capture_output=True).returncode]
        if missing:
            self.skipTest(f"install_deps.sh's packages are not all installed here ({' '.join(missing)})")
        self.assertEqual(sorted(derived - installed_closure(roots)), [],
                         "runtime packages outside install_deps.sh's dependencies")

    def test_the_runtime_list_installs_on_a_bare_system(self):
        need_binary(self)
        policy = subprocess.run(["apt-cache", "policy", "libgrpc++1.51"], capture_output=True, text=True).stdout
        if "Candidate: (none)" in policy or "Candidate:" not in policy:
            self.skipTest("apt has no package lists (run apt-get update)")
        r = runtime_packages(*bundled_args(REEL), REEL)
        self.assertEqual(r.returncode, 0, r.stderr)
        with tempfile.NamedTemporaryFile() as empty:  # a dpkg status with nothing installed: what a bare image needs
            r = subprocess.run(["apt-get", "-s", "-o", f"Dir::State::status={empty.name}", "install",
                                "--no-install-recommends"] + r.stdout.split(), capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr)
        installed = set(re.findall(r"^Inst (\S+)", r.stdout, re.M))
        self.assertIn("libgrpc++1.51", installed)
        self.assertEqual(sorted(p for p in installed if p.endswith("-dev") or p.startswith("libtorch")), [])

    def test_runtime_packages_refuses_a_missing_binary(self):
        r = runtime_packages("/nonexistent/reel")
        self.assertEqual(r.returncode, 2)
        self.assertIn("/nonexistent/reel", r.stderr)


if __name__ == "__main__":
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-"):
        REEL = sys.argv.pop(1)
    result = unittest.main(verbosity=2, exit=False).result
    if result.skipped and result.wasSuccessful() and len(result.skipped) >= result.testsRun:
        print("SKIPPED: every check was skipped (see the reasons above)")
    sys.exit(0 if result.wasSuccessful() else 1)
