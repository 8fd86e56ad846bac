"""What the export tests share: import paths, the tiny mirror models, a trained SentencePiece model, the reel
binary and running the export CLI."""

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

TESTS = Path(__file__).resolve().parent
TOOL = TESTS.parent
REPO = TOOL.parent.parent
sys.path.insert(0, str(TOOL))

import torch  # noqa: E402

import mirror_t5  # noqa: E402
import mirror_transformer  # noqa: E402
import mirror_vae  # noqa: E402
from mirror_common import randomize  # noqa: E402

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


def tiny_t5(seed=1):
    return randomize(mirror_t5.T5EncoderModel(), seed)


def tiny_transformer(variant="5b", seed=2, **overrides):
    kw = dict(VARIANTS[variant])
    kw.update(overrides)
    return randomize(mirror_transformer.CogVideoXTransformer3DModel(**kw), seed)


def tiny_vae(seed=3, **overrides):
    return randomize(mirror_vae.AutoencoderKLCogVideoX(**overrides), seed)


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
    """A diffusers-layout checkpoint directory of the tiny mirrors (their own weight file format)."""
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
    """Runs reel_export.py; with_diffusers puts the test stand-ins for diffusers/transformers on the path."""
    env = dict(os.environ)
    paths = [str(TESTS / "fake_site"), str(TESTS)] if with_diffusers else []
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [env.get("PYTHONPATH")] if p])
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, str(TOOL / "reel_export.py"), *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300)


class TempDirTest(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="reel-export-test-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)
