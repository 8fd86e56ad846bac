"""Builds one TorchScript part of a stage package: the part's source and weight names come from Reel's own builders
(models/*_script.cc, through the reel_model_source program), so an exported package runs exactly the source of the
synthetic presets; the weights are taken by name from a diffusers-style module and stored flat on one module.
Reel's runtime moves, converts and quantizes a part's top-level parameters, so every weight must be one."""

import json
import os
import shutil
import subprocess
import types
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from .errors import ExportError

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}

# The generated source uses the builtin spellings that LibTorch's C++ Module::define accepts (torch.gelu,
# torch.linear, torch.silu_), as models/*_script.cc do. Python's torch module lacks some of them; this namespace
# resolves them to the same aten builtins.
_TORCH_NAMESPACE = types.ModuleType("torch")


def _torch_attr(name):
    if hasattr(torch, name):
        return getattr(torch, name)
    return getattr(torch._C._nn, name)


_TORCH_NAMESPACE.__getattr__ = _torch_attr


def _resolve(name):
    return _TORCH_NAMESPACE if name == "torch" else None


def config_value(module, key: str, default=None, required: bool = False, component: str = ""):
    """Reads `key` from module.config: diffusers' FrozenDict, a transformers config object or a plain dict."""
    cfg = getattr(module, "config", None)
    value = None
    found = False
    if isinstance(cfg, dict) and key in cfg:
        value, found = cfg[key], True
    elif cfg is not None and hasattr(cfg, key):
        value, found = getattr(cfg, key), True
    if not found:
        if required:
            raise ExportError(f"{component}: config has no '{key}'")
        return default
    return value


class Weights:
    """Tensors of one component by their diffusers names, with shape checks; errors name the component and path."""

    def __init__(self, component: str, root: torch.nn.Module):
        self.component = component
        self.root = root

    def find(self, path: str):
        obj = self.root
        for part in path.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                return None
            if obj is None:
                return None
        return obj

    def tensor(self, path: str, shape: Sequence[int]) -> torch.Tensor:
        t = self.find(path)
        if not isinstance(t, torch.Tensor):
            raise ExportError(f"{self.component}: weight '{path}' is missing; accepted a diffusers-layout module")
        if tuple(t.shape) != tuple(shape):
            raise ExportError(f"{self.component}: weight '{path}' has shape {list(t.shape)}, expected {list(shape)} "
                              "from the component's config")
        return t

    def has(self, path: str) -> bool:
        return isinstance(self.find(path), torch.Tensor)


class PartBuilder:
    """Collects one part's flat weights (cast to the package dtype) and its TorchScript source."""

    def __init__(self, weights: Weights, dtype: torch.dtype):
        self.w = weights
        self.dtype = dtype
        self.params: Dict[str, torch.Tensor] = {}
        self.source: List[str] = []

    def take(self, name: str, path: str, shape: Sequence[int], keep_f32: bool = False) -> None:
        t = self.w.tensor(path, shape).detach()
        # float16 keeps what the source lists in keep_in_f32() in float32 (transformers' _keep_in_fp32_modules).
        dtype = torch.float32 if keep_f32 and self.dtype == torch.float16 else self.dtype
        # A copy, so that the saved file holds exactly this tensor's storage and never a larger shared one.
        self.params[name] = t.to(dtype=dtype, copy=True).contiguous()

    def define(self, source: str, weights: Sequence[Tuple[str, Sequence[int]]],
               path_of: Callable[[str], str]) -> None:
        """Takes every weight the source declares: `name` from path_of(name) in the diffusers module, with the
        declared shape. A weight the architecture has no place for (a bias where Reel's source has none) is refused,
        so that no checkpoint weight is silently dropped."""
        names = {name for name, _ in weights}
        keep = MODEL_SOURCE.keep_in_f32(source)
        for name, shape in weights:
            self.take(name, path_of(name), shape, name in keep)
            if name.endswith("_w") and name[:-2] + "_b" not in names:
                module_path = path_of(name).rsplit(".", 1)[0]
                if self.w.has(module_path + ".bias"):
                    raise ExportError(f"{self.w.component}: '{module_path}.bias' exists but this architecture has "
                                      "no bias there")
        self.source.append(source)

    def finish(self, class_name: str) -> torch.jit.ScriptModule:
        holder = type(class_name, (torch.nn.Module,), {})()
        for name, t in self.params.items():
            holder.register_parameter(name, torch.nn.Parameter(t, requires_grad=False))
        module = torch.jit._recursive.create_script_module(holder, lambda m: [], share_types=False)
        module._c._define(module._concrete_type, "".join(self.source), _resolve)
        module.eval()
        return module


def class_name_for(file: str) -> str:
    """Reel_<file with non-alphanumerics as _>, as models/synth.cc names its parts."""
    return "Reel_" + "".join(c if c.isalnum() else "_" for c in file)


def count_weights(module: torch.jit.ScriptModule) -> Tuple[int, int]:
    """(params, bytes) exactly as Reel's loader counts them: every parameter, numel and element size."""
    params = 0
    nbytes = 0
    for p in module.parameters():
        params += p.numel()
        nbytes += p.numel() * p.element_size()
    return params, nbytes


def _model_source_binary() -> str:
    env = os.environ.get("REEL_MODEL_SOURCE")
    if env:
        return env
    root = Path(__file__).resolve().parents[3]
    for build in [os.environ.get("REEL_BUILD_DIR"), root / "build"]:
        if build and (Path(build) / "models" / "reel_model_source").is_file():
            return str(Path(build) / "models" / "reel_model_source")
    found = shutil.which("reel_model_source")
    if found:
        return found
    raise ExportError("reel_model_source was not found (it gives every part its TorchScript source): build Reel "
                      "first (scripts/build.sh), or set REEL_MODEL_SOURCE or REEL_BUILD_DIR")


class ModelSource:
    """Reel's part builders (reel_model_source), asked once per distinct part: (source, [(weight, shape)])."""

    def __init__(self):
        self._cache: Dict[str, Tuple[str, List[Tuple[str, List[int]]]]] = {}
        self._keep: Dict[str, List[str]] = {}  # by source

    def keep_in_f32(self, source: str) -> List[str]:
        """The weights a float16 part of this source holds in float32 (ScriptBuilder::KeepInF32)."""
        return self._keep.get(source, [])

    def part(self, component: str, part: str, config: dict, text_tokens: int = 0):
        request = json.dumps({"component": component, "part": part, "config": config, "text_tokens": text_tokens},
                             sort_keys=True)
        if request not in self._cache:
            binary = _model_source_binary()
            try:
                r = subprocess.run([binary], input=request + "\n", capture_output=True, text=True, check=False)
            except OSError as e:
                raise ExportError(f"reel_model_source {binary}: cannot run ({e.strerror})") from None
            try:
                answer = json.loads(r.stdout.splitlines()[0])
            except (IndexError, json.JSONDecodeError):
                raise ExportError(f"reel_model_source {binary}: no answer (exit {r.returncode}): "
                                  f"{r.stderr.strip()[-300:]}") from None
            if "error" in answer:
                raise ExportError(f"{component} {part}: {answer['error']}")
            self._cache[request] = (answer["source"], [(n, list(shape)) for n, shape in answer["weights"]])
            self._keep[answer["source"]] = list(answer.get("keep_in_f32", []))
        return self._cache[request]


MODEL_SOURCE = ModelSource()


def diffusers_path(table: Dict[str, str], name: str) -> str:
    """A flat weight name (stem_w / stem_b) as a module path: table[stem] + .weight / .bias."""
    stem, suffix = name.rsplit("_", 1)
    if stem not in table or suffix not in ("w", "b"):
        raise ExportError(f"weight '{name}' of Reel's source has no known place in the checkpoint")
    return table[stem] + (".weight" if suffix == "w" else ".bias")
