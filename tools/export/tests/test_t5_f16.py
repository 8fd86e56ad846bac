"""The exported text encoder in float16 and bfloat16 against transformers' own T5EncoderModel loaded with
from_pretrained(torch_dtype=...) on the CPU, as CogVideoXPipeline loads it: under float16 transformers keeps `wo` in
float32 (`_keep_in_fp32_modules`) and clamps the float16 residual stream; the parts must do the same, including on
weights that overflow float16. The parts compute transformers' ops in transformers' order (its `gelu_new` op by op, not
ATen's fused tanh GELU), so the embeddings are transformers' to the bit in both dtypes."""

import sys
import tempfile
import unittest
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporter import t5  # noqa: E402
from exporter.script import class_name_for  # noqa: E402

try:
    from transformers import T5Config, T5EncoderModel
except ImportError:  # pragma: no cover - the project's environment has it (scripts/requirements.txt)
    T5EncoderModel = None

CONFIG = dict(vocab_size=384, d_model=64, d_kv=16, num_heads=4, d_ff=160, num_layers=3,
              relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
              pad_token_id=0, eos_token_id=1, feed_forward_proj="gated-gelu")


@unittest.skipIf(T5EncoderModel is None, "transformers is not installed")
class T5HalfPrecisionTest(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp = Path(self._tmp.name)

    def tearDown(self):
        self._tmp.cleanup()

    def checkpoint(self, overflow: bool) -> Path:
        model = T5EncoderModel(T5Config(**CONFIG)).eval()
        with torch.no_grad():
            for p in model.parameters():  # weights of a trained model's size, not the initialiser's
                p.normal_(0.0, 0.05 if p.dim() == 2 else 1.0)
            model.shared.weight.normal_(0.0, 3.0)
            if overflow:  # block 0's attention output past float16's 65504: transformers clamps the inf
                model.encoder.block[0].layer[0].SelfAttention.v.weight.mul_(1000.0)
                model.encoder.block[0].layer[0].SelfAttention.o.weight.mul_(1000.0)
        path = self.tmp / ("overflow" if overflow else "plain")
        model.save_pretrained(str(path))
        return path

    def parts(self, te, dtype):
        parts = []

        def save(role, file, builder):
            path = self.tmp / file.replace("/", "_")
            builder.finish(class_name_for(file)).save(str(path))
            parts.append(torch.jit.load(str(path)))

        t5.write_parts(te, t5.read_spec(te), dtype, save)
        return parts

    def compare(self, dtype, overflow=False):
        te = T5EncoderModel.from_pretrained(str(self.checkpoint(overflow)), torch_dtype=dtype).eval()
        ids = torch.randint(3, CONFIG["vocab_size"], (2, 32))
        attention = []  # block 0's residual stream after attention, before transformers' clamp
        hook = te.encoder.block[0].layer[0].register_forward_hook(lambda m, i, o: attention.append(o[0]))
        with torch.no_grad():
            want = te(ids)[0]
            hook.remove()
            self.assertEqual(bool(torch.isinf(attention[0]).any()), overflow)
            parts = self.parts(te, dtype)
            h, bias = parts[0](ids)
            for block in parts[1:-1]:
                h = block(h, bias)
            got = parts[-1](h)
        self.assertEqual(got.dtype, want.dtype)
        self.assertTrue(torch.isfinite(want).all(), "transformers' own output is not finite")
        err = (got.float() - want.float()).abs().max().item()
        scale = want.float().abs().max().item()
        return parts, err, scale

    def test_float16_keeps_wo_in_float32_as_transformers(self):
        parts, err, scale = self.compare(torch.float16)
        block = parts[1]
        self.assertEqual(block.wo_w.dtype, torch.float32)
        self.assertEqual(block.wi0_w.dtype, torch.float16)
        self.assertEqual(block.keep_in_f32(), ["wo_w"])
        self.assertEqual(err, 0.0, f"max error {err} against transformers' float16 (max {scale})")

    def test_float16_clamps_overflow_as_transformers(self):
        _, err, scale = self.compare(torch.float16, overflow=True)
        self.assertEqual(err, 0.0, f"max error {err} against transformers' float16 (max {scale})")

    def test_bfloat16_is_unchanged(self):
        parts, err, scale = self.compare(torch.bfloat16)
        self.assertEqual(parts[1].wo_w.dtype, torch.bfloat16)  # transformers keeps wo in float32 under float16 only
        self.assertEqual(err, 0.0, f"max error {err} against transformers' bfloat16 (max {scale})")


if __name__ == "__main__":
    unittest.main()
