"""Test stand-in for transformers: the T5 mirror under its class name (see ../diffusers/__init__.py), and the real
T5Tokenizer asked in a child Python without this stand-in on its path (the real package cannot be imported beside
it under the same name)."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

from mirror_t5 import T5EncoderModel  # noqa: F401

_ASK = """
import json, sys
from transformers import T5Tokenizer
t = T5Tokenizer.from_pretrained(sys.argv[1])
json.dump({"backend": t.backend_tokenizer.to_str(), "ids": {k: t.convert_tokens_to_ids(k) for k in sys.argv[2:]},
           "pad_token_id": t.pad_token_id, "padding_side": t.padding_side,
           "truncation_side": t.truncation_side}, sys.stdout)
"""


class T5Tokenizer:
    @classmethod
    def from_pretrained(cls, folder):
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and os.path.abspath(p) != here]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
        r = subprocess.run([sys.executable, "-c", _ASK, str(folder), "</s>"], capture_output=True, text=True,
                           env=env, check=False)
        if r.returncode != 0:
            raise OSError(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "T5Tokenizer failed")
        got = json.loads(r.stdout)
        tok = cls()
        tok.backend_tokenizer = SimpleNamespace(to_str=lambda: got["backend"])
        tok.convert_tokens_to_ids = lambda token: got["ids"][token]
        tok.pad_token_id = got["pad_token_id"]
        tok.padding_side = got["padding_side"]
        tok.truncation_side = got["truncation_side"]
        return tok
