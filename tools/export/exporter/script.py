"""Builds one TorchScript part of a stage package: weights taken by name from a diffusers-style module, stored flat
on one module, plus generated TorchScript source. The Python twin of models/script_builder.cc: Reel's runtime moves,
converts and quantizes a part's top-level parameters, so every weight must be one (no submodules, no buffers)."""

import types
from typing import Dict, List, Sequence, Tuple

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


def float_literal(x: float) -> str:
    """A literal TorchScript reads as float, never as int."""
    s = repr(float(x))
    return s if any(c in s for c in ".en") else s + ".0"


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

    def take(self, name: str, path: str, shape: Sequence[int]) -> None:
        t = self.w.tensor(path, shape).detach()
        # A copy, so that the saved file holds exactly this tensor's storage and never a larger shared one.
        self.params[name] = t.to(dtype=self.dtype, copy=True).contiguous()

    def linear(self, name: str, path: str, in_features: int, out_features: int, bias: bool = True) -> None:
        self.take(name + "_w", path + ".weight", (out_features, in_features))
        self._bias(name, path, out_features, bias)

    def norm(self, name: str, path: str, dim: int, bias: bool = True) -> None:
        self.take(name + "_w", path + ".weight", (dim,))
        self._bias(name, path, dim, bias)

    def conv(self, name: str, path: str, in_channels: int, out_channels: int, kernel: Sequence[int],
             bias: bool = True) -> None:
        self.take(name + "_w", path + ".weight", (out_channels, in_channels, *kernel))
        self._bias(name, path, out_channels, bias)

    def _bias(self, name: str, path: str, dim: int, bias: bool) -> None:
        if bias:
            self.take(name + "_b", path + ".bias", (dim,))
        elif self.w.has(path + ".bias"):
            raise ExportError(f"{self.w.component}: '{path}.bias' exists but this architecture has no bias there")

    def define(self, source: str) -> None:
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


def optional_arg(builder: PartBuilder, name: str) -> str:
    """`self.<name>` when the part holds that weight, else `None` (TorchScript's Optional[Tensor])."""
    return "self." + name if name in builder.params else "None"
