"""The checkpoint's tokenizer as transformers runs it, for Reel's runtime (package/tokenizer.cc). CogVideoXPipeline
loads `T5Tokenizer.from_pretrained(checkpoint, subfolder="tokenizer")`; in transformers 5 that is the
tokenizers-backed class, built from tokenizer.json when present (its vocabulary, normalizer and added tokens) and
from spiece.model otherwise (the model's own normalizer, `<extra_id_N>` in the vocabulary). Whatever the files
(tokenizer_config.json's `legacy` flag included, which this class does not read), it runs:

  split at added tokens (literal `</s>`, `<pad>`, `<extra_id_0>`, ...: one id each)
  -> normalizer (none, or SentencePiece's precompiled charsmap) -> split at Unicode whitespace, `▁` before each word
  -> Unigram over the vocabulary -> ids + `</s>`.

This module asks transformers for that tokenizer, checks that Reel's runtime reproduces it (SentencePiece's Unigram
over the same pieces, spm_encode with the same normalizer, the added tokens matched first), and returns what the
package needs: the SentencePiece model with transformers' normalizer, and the added tokens for the manifest."""

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

from .errors import ExportError

_PRE_TOKENIZER = {"type": "Sequence", "pretokenizers": [
    {"type": "WhitespaceSplit"}, {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}]}


@dataclass
class TokenizerExport:
    model: bytes  # the SentencePiece model, its normalizer set to the one transformers applies
    added_tokens: List[Tuple[str, int]]  # (content, id), matched in the prompt before anything else
    pad_id: int
    eos_id: int
    normalizer: str  # "none" or "sentencepiece" (the model's precompiled charsmap): for messages and docs


def _load(folder: Path):
    try:
        from transformers import T5Tokenizer
    except ImportError as e:
        raise ExportError(f"reading the tokenizer needs the Python packages diffusers and transformers ({e}); "
                          "install them where this runs (pip install diffusers transformers)") from None
    try:
        return T5Tokenizer.from_pretrained(str(folder))
    except Exception as e:  # the library's own error: name the folder, keep its first line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"tokenizer {folder}: loading it with transformers' T5Tokenizer failed: {first}") from None


def _model_proto(spiece: Path):
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as e:
        raise ExportError(f"reading {spiece} needs the Python packages sentencepiece and protobuf ({e})") from None
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(spiece.read_bytes())
    except Exception as e:
        raise ExportError(f"tokenizer {spiece}: not a SentencePiece model ({e})") from None
    return proto


def read_tokenizer(spiece: Path, vocab_size: int) -> TokenizerExport:
    """`spiece` is the checkpoint's tokenizer/spiece.model; its folder is what transformers loads. `vocab_size` is
    the text encoder's: every id the tokenizer can produce must index its embedding."""
    spiece = Path(spiece)
    folder = spiece.parent
    tok = _load(folder)
    backend = json.loads(tok.backend_tokenizer.to_str())
    proto = _model_proto(spiece)
    where = f"tokenizer {folder}"

    model = backend.get("model") or {}
    if model.get("type") != "Unigram" or model.get("byte_fallback"):
        raise ExportError(f"{where}: transformers built a {model.get('type')} model (byte_fallback "
                          f"{model.get('byte_fallback')}); accepted Unigram without byte fallback (T5)")
    if proto.trainer_spec.model_type != 1:  # UNIGRAM
        raise ExportError(f"{where}: spiece.model is of SentencePiece model type {proto.trainer_spec.model_type}; "
                          "accepted 1 (unigram, T5)")
    if backend.get("pre_tokenizer") != _PRE_TOKENIZER:
        raise ExportError(f"{where}: pre-tokenizer {json.dumps(backend.get('pre_tokenizer'))}; accepted T5's "
                          "WhitespaceSplit + Metaspace('▁', always)")
    if model.get("unk_id") != proto.trainer_spec.unk_id:
        raise ExportError(f"{where}: unknown-token id {model.get('unk_id')} differs from spiece.model's "
                          f"{proto.trainer_spec.unk_id}")

    added = backend.get("added_tokens") or []
    added_ids = {a["id"] for a in added}
    vocab = model.get("vocab") or []
    pieces = proto.pieces
    if len(vocab) < len(pieces):
        raise ExportError(f"{where}: the vocabulary transformers loaded has {len(vocab)} pieces, spiece.model "
                          f"{len(pieces)}; accepted the same pieces")
    for i, (piece, score) in enumerate(vocab):
        if i >= len(pieces):
            if i not in added_ids:  # the Unigram model could emit it, and spm_encode cannot
                raise ExportError(f"{where}: vocabulary piece {i} {piece!r} is neither in spiece.model nor an "
                                  "added token; accepted extra pieces only as added tokens")
        elif pieces[i].piece != piece or (i not in added_ids and abs(pieces[i].score - score) > 1e-4):
            raise ExportError(f"{where}: vocabulary piece {i} is {piece!r} ({score}) in transformers and "
                              f"{pieces[i].piece!r} ({pieces[i].score}) in spiece.model; accepted the same pieces")

    tokens = []
    for a in added:
        flags = [f for f in ("lstrip", "rstrip", "single_word", "normalized") if a.get(f)]
        if flags:
            raise ExportError(f"{where}: added token {a['content']!r} has {', '.join(flags)} set; accepted added "
                              "tokens matched literally (all four false, as T5's)")
        if not a["content"] or not 0 <= a["id"] < vocab_size:
            raise ExportError(f"{where}: added token {a['content']!r} has id {a['id']}; accepted a non-empty "
                              f"token with an id below the text encoder's vocab_size {vocab_size}")
        tokens.append((a["content"], int(a["id"])))

    normalizer = backend.get("normalizer")
    spec = proto.normalizer_spec
    # Whatever the model says, transformers' pre-tokenizer drops extra whitespace and puts '▁' before every word.
    whitespace = spec.add_dummy_prefix and spec.remove_extra_whitespaces and spec.escape_whitespaces
    if normalizer is None:
        # transformers normalises nothing: spm_encode must not either (it still splits at spaces and adds '▁').
        spec.name = "identity"
        spec.precompiled_charsmap = b""
        kind = "none"
    elif (normalizer.get("type") == "Precompiled"
          and base64.b64decode(normalizer.get("precompiled_charsmap", "")) == spec.precompiled_charsmap):
        kind = "sentencepiece"
    else:
        raise ExportError(f"{where}: normalizer {normalizer.get('type')} is not spiece.model's own; accepted none "
                          "or the model's precompiled charsmap")
    spec.add_dummy_prefix = True
    spec.remove_extra_whitespaces = True
    spec.escape_whitespaces = True
    # The checkpoint's own file, byte for byte, where it already is what transformers runs.
    model = spiece.read_bytes() if kind == "sentencepiece" and whitespace else proto.SerializeToString()

    single = (backend.get("post_processor") or {}).get("single")
    if (not isinstance(single, list) or len(single) != 2 or "Sequence" not in single[0]
            or "SpecialToken" not in single[1]):
        raise ExportError(f"{where}: post-processor {json.dumps(single)}; accepted T5's `$A </s>`")
    eos_id = tok.convert_tokens_to_ids(single[1]["SpecialToken"]["id"])
    pad_id = tok.pad_token_id
    if pad_id is None or not (0 <= pad_id < vocab_size and 0 <= eos_id < vocab_size):
        raise ExportError(f"{where}: pad id {pad_id} / eos id {eos_id}; accepted ids below the text encoder's "
                          f"vocab_size {vocab_size}")
    if tok.padding_side != "right" or tok.truncation_side != "right":
        raise ExportError(f"{where}: padding side {tok.padding_side} / truncation side {tok.truncation_side}; "
                          "accepted right / right (as CogVideoXPipeline runs T5)")
    return TokenizerExport(model, tokens, int(pad_id), int(eos_id), kind)
