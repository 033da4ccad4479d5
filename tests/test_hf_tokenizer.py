"""``data_prep tokenize --tokenizer tokenizer.json``: a Hugging Face ``tokenizers`` file, as well as a .model.

A tiny byte-level BPE (GPT-2 style, ``<|endoftext|>`` special) is trained here; the real CLI
(``data_prep.__main__.main``, in this process) tokenizes a JSONL file with it, and the shards are
read back and decoded with ``tokenizers`` itself.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from data_prep.__main__ import main

EOT = "<|endoftext|>"
DOCS = [
    "The quick brown fox jumps over the lazy dog.\nIt was not amused, and said so twice.",
    "def f(x):\n\treturn x ** 2  # squares, with a tab and  two spaces\n\n",
    "Caf\u00e9 cr\u00e8me, na\u00efve r\u00e9sum\u00e9; \u65e5\u672c\u8a9e\u306e\u6587\u7ae0\u3067\u3059 "
    "\U0001f642\U0001f680 -- unicode text",
    f"A document that mentions {EOT} literally is still one document, not two of them.",
    "   leading spaces, trailing spaces   \nand a line with only spaces:\n    \nend of the story here",
    "Numbers 1234567890 and symbols !@#$%^&*()[]{}<>?/\\|~` in one line of the test text",
]


def _bpe(path: Path, specials: list[str], vocab_size: int = 300) -> Path:
    """A byte-level BPE like GPT-2's, with a post-processor appending EOS and truncation at 8 tokens
    saved in the file: tokenize must use neither (it appends EOS itself, and never truncates)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(DOCS * 20, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {specials[0]}", special_tokens=[(specials[0], tok.token_to_id(specials[0]))])
    tok.enable_truncation(max_length=8)
    tok.save(str(path))
    return path


def _jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


def _tokenize(inp: Path, out: Path, tok: Path, *extra: str) -> int:
    return main(["-q", "tokenize", "--input", str(inp), "--output", str(out), "--tokenizer", str(tok),
                 "--seq-len", "32", "--val-fraction", "0", "--workers", "1", *extra])


def test_tokenizer_json_end_to_end(tmp_path):
    from tokenizers import Tokenizer

    from data_prep import read_manifest, read_tokens

    tok_path = _bpe(tmp_path / "tok.json", [EOT])
    docs = DOCS * 3  # the last one may be cut by the dropped tail: the others come back whole
    inp = _jsonl(tmp_path / "docs.jsonl", docs)
    out = tmp_path / "tokens"
    assert _tokenize(inp, out, tok_path) == 0

    hf = Tokenizer.from_file(str(tok_path))
    eos = hf.token_to_id(EOT)
    m = read_manifest(out)
    assert m["tokenizer"] == {"path": str(tok_path), "kind": "tokenizers",
                              "sha256": hashlib.sha256(tok_path.read_bytes()).hexdigest()}
    assert m["vocab_size"] == hf.get_vocab_size(with_added_tokens=True) == 300
    assert (m["eos_id"], m["dtype"]) == (eos, "uint16")

    flat = np.concatenate(list(read_tokens(out, "train"))).astype(np.int64)
    cuts = np.flatnonzero(flat == eos)
    pieces = np.split(flat[: cuts[-1] + 1], cuts[:-1] + 1)
    complete = [hf.decode(p[:-1].tolist(), skip_special_tokens=False) for p in pieces]
    # EOS only between documents (the literal "<|endoftext|>" in a text is text), every text exact
    assert complete == docs[: len(complete)] and len(complete) >= len(docs) - 1
    # and the ids are the tokenizer's own encoding of each text, untruncated, with no extra tokens
    hf.no_truncation()
    first = hf.encode(docs[0], add_special_tokens=False).ids
    assert len(first) > 8 and flat[: len(first) + 1].tolist() == [*first, eos]


def test_tokenizer_json_eos_errors_and_wide_vocab(tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from data_prep import read_manifest, read_tokens
    from data_prep.tokenizer import load_tokenizer

    inp = _jsonl(tmp_path / "docs.jsonl", ["a b a", "b b"])
    # no EOS among the special tokens and no --eos-piece: refused, naming the file and what is expected
    no_eos = _bpe(tmp_path / "noeos.json", ["<|pad|>"])
    assert _tokenize(inp, tmp_path / "x", no_eos) == 2
    err = capsys.readouterr().err
    assert "noeos.json" in err and "no end-of-sequence token" in err and "--eos-piece" in err and EOT in err
    assert not (tmp_path / "x" / "manifest.json").exists()
    assert _tokenize(inp, tmp_path / "y", no_eos, "--eos-piece", "<nope>") == 2
    assert "--eos-piece '<nope>': no such piece" in capsys.readouterr().err
    # a JSON file that is not a tokenizer.json
    bad = tmp_path / "tokenizer_config.json"
    bad.write_text('{"tokenizer_class": "GPT2Tokenizer"}')
    assert _tokenize(inp, tmp_path / "z", bad) == 2
    assert "tokenizer_config.json: a JSON file but not a Hugging Face tokenizers file" in capsys.readouterr().err

    # ids past 65535 (Llama-3's vocabulary is 128256): uint32 shards; vocab_size bounds every id,
    # even with gaps in the ids; --eos-piece names any of its tokens
    wide = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2, "<sep>": 70_000}, unk_token="[UNK]"))
    wide.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    wide.save(str(tmp_path / "wide.json"))
    tok = load_tokenizer(tmp_path / "wide.json")
    assert (tok.kind, tok.vocab_size, tok.eos_id) == ("tokenizers", 70_001, None)
    out = tmp_path / "wide"
    assert _tokenize(inp, out, tmp_path / "wide.json", "--eos-piece", "<sep>") == 0
    m = read_manifest(out)
    assert (m["vocab_size"], m["eos_id"], m["dtype"]) == (70_001, 70_000, "uint32")
    # 2 documents: a b a <sep> b b <sep> = 7 tokens < 33, all dropped as the tail, and counted
    assert m["splits"]["train"]["tokens"] == 7 and list(read_tokens(out, "train")) == []


def test_one_interface_for_both_kinds_and_export_files(tmp_path):
    import sentencepiece as spm

    from data_prep.tokenizer import load_tokenizer, resolve_eos
    from pretrain.export import _tokenizers_info, _write_tokenizer

    text = DOCS[1] + DOCS[3]
    hf_path = _bpe(tmp_path / "tok.json", [EOT, "<|begin_of_text|>"])
    sp_model = tmp_path / "sp.model"
    spm.SentencePieceTrainer.train(  # data_prep train-tokenizer's settings for an exact round trip
        sentence_iterator=iter(DOCS * 5), model_prefix=str(sp_model.with_suffix("")), vocab_size=400, minloglevel=2,
        model_type="bpe", byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=False, allow_whitespace_only_pieces=True, user_defined_symbols=["\n"])
    for path, kind in ((hf_path, "tokenizers"), (sp_model, "sentencepiece")):
        tok = load_tokenizer(path)
        assert tok.kind == kind
        assert tok.decode(tok.encode(text)) == text
        assert resolve_eos(tok, path) == tok.eos_id == tok.token_id(tok.special["eos"][1])
        assert all(0 <= i < tok.vocab_size for i in tok.encode(text))

    # pretrain.export writes a tokenizer.json run's tokenizer without its post-processor or truncation
    special = _tokenizers_info(hf_path)
    assert special["eos"][1] == EOT and special["bos"][1] == "<|begin_of_text|>" and special["unk"] == (None, None)
    _write_tokenizer(hf_path, "tokenizers", tmp_path, special, False, 64)
    from tokenizers import Tokenizer

    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast" and cfg["eos_token"] == EOT
    exported = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    exported.encode_special_tokens = cfg["split_special_tokens"]  # what transformers does with it
    assert exported.encode(text).ids == load_tokenizer(hf_path).encode(text)


@pytest.mark.parametrize("content", [b"", b"\x00\x01 not a model"])
def test_bad_tokenizer_files_are_named(tmp_path, content):
    from data_prep.errors import DataPrepError
    from data_prep.tokenizer import load_tokenizer

    path = tmp_path / "weird.bin"
    path.write_bytes(content)
    with pytest.raises(DataPrepError, match=r"--tokenizer .*weird\.bin: not a sentencepiece model \(nor a tokenizer"):
        load_tokenizer(path)
    with pytest.raises(DataPrepError, match=r"--tokenizer .*missing\.json: no such file"):
        load_tokenizer(tmp_path / "missing.json")
