"""What the export tests share: import paths, tiny CogVideoX models built from configs with the real diffusers and
transformers classes (random weights), a trained SentencePiece model, the reel binary and running the export CLI."""

import atexit
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from types import SimpleNamespace

TESTS = Path(__file__).resolve().parent
TOOL = TESTS.parent
REPO = TOOL.parent.parent
sys.path.insert(0, str(TOOL))

import torch  # noqa: E402
from diffusers import AutoencoderKLCogVideoX, CogVideoXPipeline, CogVideoXTransformer3DModel  # noqa: E402
from transformers import T5Config, T5EncoderModel  # noqa: E402

torch.set_num_threads(1)

# Tiny CogVideoX shapes (as Reel's `tiny` preset): T5 2 × 64, 32 tokens; transformer 2 blocks × 64 (2 heads × 32),
# sample 9 frames × 64 × 64 pixels; VAE 16/32/32/64 with 1 resnet per block.
TEXT_TOKENS = 32
VARIANTS = {
    "2b": {},  # 3D sin-cos positions
    "5b": {"use_rotary_positional_embeddings": True},
    "5b-i2v": {"use_rotary_positional_embeddings": True, "use_learned_positional_embeddings": True,
               "in_channels": 32},
}
T5_CONFIG = dict(vocab_size=384, d_model=64, d_kv=16, num_heads=4, d_ff=160, num_layers=2,
                 relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
                 dropout_rate=0.1, pad_token_id=0, eos_token_id=1, feed_forward_proj="gated-gelu")
TRANSFORMER_CONFIG = dict(num_attention_heads=2, attention_head_dim=32, in_channels=16, out_channels=16,
                          time_embed_dim=64, text_embed_dim=64, num_layers=2, sample_width=8, sample_height=8,
                          sample_frames=9, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=32)
VAE_CONFIG = dict(block_out_channels=(16, 32, 32, 64), latent_channels=16, layers_per_block=1, norm_num_groups=8,
                  sample_height=64, sample_width=64, scaling_factor=0.7)


@torch.no_grad()
def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Draws every weight and persistent buffer so that no mapping mistake can hide behind the libraries' ones and
    zeros (diffusers zero-initialises nothing here, but LayerNorm scales are ones and biases zeros): matrices
    ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.1²), biases ~ N(0, 0.1²), learned positions ~ N(0, 0.5²)."""
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


def tiny_t5(seed=1, **overrides):
    return randomize(T5EncoderModel(T5Config(**dict(T5_CONFIG, **overrides))), seed)


def tiny_transformer(variant="5b", seed=2, **overrides):
    kw = dict(TRANSFORMER_CONFIG, **VARIANTS[variant])
    kw.update(overrides)
    return randomize(CogVideoXTransformer3DModel(**kw), seed)


def tiny_vae(seed=3, **overrides):
    return randomize(AutoencoderKLCogVideoX(**dict(VAE_CONFIG, **overrides)), seed)


def rotary_embeddings(transformer, height, width, num_frames, vae_scale_factor_spatial=8):
    """diffusers' own CogVideoXPipeline._prepare_rotary_positional_embeddings for `transformer` (height/width in
    pixels, frames in latents), called on the parts of a pipeline it reads."""
    pipe = SimpleNamespace(transformer=transformer, vae_scale_factor_spatial=vae_scale_factor_spatial)
    return CogVideoXPipeline._prepare_rotary_positional_embeddings(pipe, height, width, num_frames, torch.device("cpu"))


# Measured agreement with the libraries, one row per comparison: written (JSON lines) to the file REEL_PARITY_REPORT
# names when the test process ends (ctest: build/parity.jsonl); tools/export/tests/parity_table.py turns it into the
# table of docs/STAGE_PACKAGE.md.
PARITY_ROWS = []


def record_parity(stage: str, model: str, dtype: str, against: str, max_abs: float, rel: float, psnr=None):
    PARITY_ROWS.append(dict(stage=stage, model=model, dtype=dtype, against=against, max_abs=max_abs, rel=rel,
                            psnr=psnr))


@atexit.register
def _write_parity():
    path = os.environ.get("REEL_PARITY_REPORT")
    if path and PARITY_ROWS:
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in PARITY_ROWS)


def errors(got: torch.Tensor, want: torch.Tensor):
    """(max |got - want|, that over max |want|) in float32."""
    diff = (got.float() - want.float()).abs().max().item()
    return diff, diff / max(want.float().abs().max().item(), 1e-30)


def train_spiece(directory: Path) -> Path:
    """A tiny T5-style SentencePiece model (pad 0, EOS 1, unknown 2, no BOS) trained with Debian's spm_train."""
    if shutil.which("spm_train") is None:
        raise unittest.SkipTest("spm_train not found (Debian package sentencepiece)")
    rng = random.Random(0)
    words = ("a red fox runs through the snowy forest at dawn while birds sing above tall green trees near a river "
             "with blue water and golden light").split()
    corpus = directory / "corpus.txt"
    corpus.write_text("".join(" ".join(rng.choice(words) for _ in range(12)) + "\n" for _ in range(300)))
    subprocess.run(["spm_train", f"--input={corpus}", f"--model_prefix={directory / 'spiece'}", "--vocab_size=48",
                    "--hard_vocab_limit=false", "--model_type=unigram", "--pad_id=0", "--eos_id=1", "--unk_id=2",
                    "--bos_id=-1", "--minloglevel=2"], check=True, capture_output=True)
    return directory / "spiece.model"


def spm_ids(model: Path, text: str):
    out = subprocess.run(["spm_encode", "--output_format=id", f"--model={model}"], input=text + "\n",
                         capture_output=True, text=True, check=True).stdout
    return [int(t) for t in out.split()]


def reel_binary() -> str:
    path = os.environ.get("REEL_BINARY") or str(REPO / "build" / "cli" / "reel")
    if not Path(path).is_file():
        raise unittest.SkipTest(f"reel binary not found at {path} (set REEL_BINARY)")
    return path


def run_reel(args, cache_dir: Path):
    env = dict(os.environ, REEL_CACHE_DIR=str(cache_dir))
    return subprocess.run([reel_binary(), *args], capture_output=True, text=True, env=env, timeout=300)


def save_checkpoint(root: Path, variant="5b", spiece: Path = None, scheduler=None, **transformer_overrides) -> Path:
    """A checkpoint in the Hub's layout, written by the libraries' own save_pretrained (safetensors)."""
    tiny_t5().save_pretrained(root / "text_encoder")
    tiny_transformer(variant, **transformer_overrides).save_pretrained(root / "transformer")
    tiny_vae().save_pretrained(root / "vae")
    (root / "tokenizer").mkdir(parents=True)
    if spiece is not None:
        shutil.copyfile(spiece, root / "tokenizer" / "spiece.model")
    if scheduler is not None:
        (root / "scheduler").mkdir()
        (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    pipeline = "CogVideoXImageToVideoPipeline" if variant.endswith("i2v") else "CogVideoXPipeline"
    (root / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))
    return root


def run_export(args, with_diffusers=True):
    """Runs reel_export.py; with_diffusers=False runs it as if diffusers and transformers were not installed
    (their entries in sys.modules set to None, which makes importing them raise ImportError)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    argv = [str(TOOL / "reel_export.py"), *map(str, args)]
    if with_diffusers:
        cmd = [sys.executable, *argv]
    else:
        hide = ("import runpy, sys; sys.modules['diffusers'] = sys.modules['transformers'] = None; "
                "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
        cmd = [sys.executable, "-c", hide, *argv]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


class TempDirTest(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="reel-export-test-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)
