"""transformers' T5 tokenizer ids for tokenizer_parity_test.cc, and the tokenizer part of a package exported from the
same files by tools/export. Usage: reference.py WORKDIR PROMPTS_JSON > RESULT_JSON

Trains a SentencePiece model here (as bench/diffusers_pipeline.py does) and lays it out three ways a checkpoint
holds it: the Hub's (spiece.model and tokenizer_config.json, `legacy` true and false) and the one transformers 5's
save_pretrained writes (tokenizer.json, no normalizer). For each, the ids come from
`T5Tokenizer.from_pretrained(checkpoint, subfolder="tokenizer")` called as CogVideoXPipeline calls it."""

import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tools" / "export"))

import sentencepiece as spm  # noqa: E402
from transformers import T5Tokenizer  # noqa: E402

from diffusers_pipeline import train_tokenizer  # noqa: E402
from exporter.package import tokenizer_manifest  # noqa: E402
from exporter.tokenizer import read_tokenizer  # noqa: E402

VOCAB_SIZE = 32128  # CogVideoX's T5: every id must index it
MAX_LENGTH = 226


def hub_config(legacy: bool) -> dict:
    return {"tokenizer_class": "T5Tokenizer", "extra_ids": 100, "legacy": legacy, "model_max_length": MAX_LENGTH,
            "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
            "additional_special_tokens": [f"<extra_id_{i}>" for i in range(100)]}


def main() -> None:
    work = Path(sys.argv[1])
    prompts = json.loads(Path(sys.argv[2]).read_text())
    spiece = train_tokenizer(work)
    layouts = {}
    for legacy in (True, False):
        tok_dir = work / f"hub-legacy-{str(legacy).lower()}" / "tokenizer"
        tok_dir.mkdir(parents=True)
        shutil.copyfile(spiece, tok_dir / "spiece.model")
        (tok_dir / "tokenizer_config.json").write_text(json.dumps(hub_config(legacy)))
        layouts[tok_dir.parent.name] = tok_dir.parent
    sp = spm.SentencePieceProcessor(model_file=str(spiece))
    saved = T5Tokenizer(vocab=[(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())],
                        extra_ids=100)
    saved.save_pretrained(str(work / "saved" / "tokenizer"))
    shutil.copyfile(spiece, work / "saved" / "tokenizer" / "spiece.model")
    layouts["saved"] = work / "saved"

    result = {}
    for name, root in layouts.items():
        tok = T5Tokenizer.from_pretrained(str(root), subfolder="tokenizer")
        ids = [tok(p, padding="max_length", max_length=MAX_LENGTH, truncation=True, add_special_tokens=True).input_ids
               for p in prompts]
        exported = read_tokenizer(root / "tokenizer" / "spiece.model", VOCAB_SIZE)
        package = work / f"{name}-package"
        (package / "tokenizer").mkdir(parents=True)
        section = tokenizer_manifest(exported, MAX_LENGTH, VOCAB_SIZE)
        (package / section["file"]).write_bytes(exported.model)
        result[name] = {"class": type(tok).__module__ + "." + type(tok).__name__, "package": str(package),
                        "normalizer": exported.normalizer, "tokenizer": section, "ids": ids}
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
