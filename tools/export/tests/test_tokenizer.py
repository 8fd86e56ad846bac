"""The export's reading of a checkpoint's tokenizer (exporter/tokenizer.py) through transformers' own T5Tokenizer:
what it records, and the tokenizers Reel cannot reproduce, refused with one line. The ids themselves are compared
with transformers' by ctest tokenizer_parity_test."""

import json
import shutil
import sys
import tempfile
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tools" / "export"))
sys.path.insert(0, str(REPO / "bench"))

from exporter.errors import ExportError  # noqa: E402
from exporter.tokenizer import read_tokenizer  # noqa: E402

try:
    import sentencepiece as spm
    from tokenizers import AddedToken
    from transformers import T5Tokenizer
    from diffusers_pipeline import train_tokenizer
except ImportError:  # pragma: no cover - the project's environment has them (scripts/requirements.txt)
    T5Tokenizer = None


@unittest.skipIf(T5Tokenizer is None, "transformers and sentencepiece are not installed")
class ReadTokenizerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory()
        cls.tmp = Path(cls._tmp.name)
        cls.spiece = train_tokenizer(cls.tmp)
        sp = spm.SentencePieceProcessor(model_file=str(cls.spiece))
        cls.pieces = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def saved(self, name, pieces=None, edit=None) -> Path:
        """A tokenizer folder as transformers 5 saves one (tokenizer.json), beside the trained spiece.model."""
        folder = self.tmp / name
        tok = T5Tokenizer(vocab=pieces or self.pieces, extra_ids=100)
        if edit:
            edit(tok)
        tok.save_pretrained(str(folder))
        shutil.copyfile(self.spiece, folder / "spiece.model")
        return folder / "spiece.model"

    def refused(self, spiece: Path, vocab_size=32128) -> str:
        with self.assertRaises(ExportError) as e:
            read_tokenizer(spiece, vocab_size)
        self.assertNotIn("\n", str(e.exception))
        return str(e.exception)

    def test_hub_layout_keeps_the_model_and_numbers_extra_ids_last(self):
        folder = self.tmp / "hub"
        folder.mkdir()
        shutil.copyfile(self.spiece, folder / "spiece.model")
        t = read_tokenizer(folder / "spiece.model", 32128)
        self.assertEqual(t.normalizer, "sentencepiece")
        self.assertEqual(t.model, self.spiece.read_bytes())  # byte for byte the checkpoint's
        self.assertEqual(t.added_tokens[:3], [("<pad>", 0), ("</s>", 1), ("<unk>", 2)])
        self.assertIn(("<extra_id_0>", 1099), t.added_tokens)
        self.assertEqual((t.pad_id, t.eos_id), (0, 1))

    def test_saved_layout_normalises_nothing(self):
        t = read_tokenizer(self.saved("saved"), 32128)
        self.assertEqual(t.normalizer, "none")
        self.assertIn(("<extra_id_0>", 1000), t.added_tokens)
        sp = spm.SentencePieceProcessor(model_proto=t.model)
        self.assertEqual(sp.encode("Ｆｕｌｌ"), [4, 2])  # not NFKC'd into ASCII pieces
        self.assertNotEqual(spm.SentencePieceProcessor(model_file=str(self.spiece)).encode("Ｆｕｌｌ"), [4, 2])

    def test_refusals_are_one_line(self):
        self.assertIn("lstrip", self.refused(self.saved(
            "lstrip", edit=lambda t: t.add_tokens([AddedToken("<mask>", lstrip=True, special=True)]))))
        self.assertIn("normalized", self.refused(self.saved(
            "normalized", edit=lambda t: t.add_tokens([AddedToken("zebra", normalized=True)]))))
        other = [(p + "x" if i > 10 else p, s) for i, (p, s) in enumerate(self.pieces)]
        self.assertIn("vocabulary piece 11", self.refused(self.saved("other-vocab", pieces=other)))
        self.assertIn("below the text encoder's vocab_size 500", self.refused(self.saved("small"), vocab_size=500))
        missing = self.tmp / "missing"
        missing.mkdir()
        (missing / "spiece.model").write_bytes(b"not a model")
        self.assertIn("tokenizer", self.refused(missing / "spiece.model"))


if __name__ == "__main__":
    unittest.main()
