"""Shared pieces of the test mirrors: configs read like diffusers' FrozenDict or transformers' config objects,
from_pretrained/save_pretrained over a directory (config.json + a state dict), and random weights."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

WEIGHTS_FILE = "mirror_weights.pt"


class FrozenDict(dict):
    """diffusers' config: a dict whose keys also read as attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class PretrainedMixin:
    """from_pretrained(dir, torch_dtype=...) / save_pretrained(dir) with diffusers' and transformers' call shapes."""

    # Extra keys a real checkpoint's config.json carries besides the constructor arguments.
    config_extras: dict = {}

    @classmethod
    def from_pretrained(cls, path, torch_dtype=None, **_):
        cfg = json.loads((Path(path) / "config.json").read_text())
        kwargs = {k: v for k, v in cfg.items() if not k.startswith("_") and k not in cls.config_extras}
        model = cls(**kwargs)
        model.load_state_dict(torch.load(Path(path) / WEIGHTS_FILE))
        if torch_dtype is not None:
            model = model.to(torch_dtype)
        return model.eval()

    def save_pretrained(self, path):
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        cfg = dict(self.config_extras)
        cfg.update(dict(self.config) if isinstance(self.config, dict) else vars(self.config))
        (path / "config.json").write_text(json.dumps(cfg, indent=2))
        torch.save(self.state_dict(), path / WEIGHTS_FILE)


def attr_config(**kwargs):
    """transformers-style config: attributes only."""
    return SimpleNamespace(**kwargs)


@torch.no_grad()
def randomize(module: nn.Module, seed: int) -> nn.Module:
    """Draws every weight and persistent buffer so that no mapping mistake can hide behind ones and zeros:
    matrices ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.1²), biases ~ N(0, 0.1²), learned positions ~ N(0, 0.5²)."""
    g = torch.Generator().manual_seed(seed)
    persistent = set(module.state_dict().keys())  # not diffusers' computed sin-cos table
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if not t.is_floating_point() or name not in persistent:
            continue
        r = torch.randn(t.shape, generator=g, dtype=torch.float32)
        if "pos_embedding" in name:
            t.copy_(0.5 * r)
        elif t.dim() >= 2:
            fan_in = t[0].numel() if t.dim() > 2 or "embed" not in name else t.shape[1]
            t.copy_(r / math.sqrt(max(1, fan_in)))
        elif name.endswith("bias"):
            t.copy_(0.1 * r)
        else:
            t.copy_(1.0 + 0.1 * r)
    return module.eval()
