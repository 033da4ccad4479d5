"""``train-tokenizer``: a sentencepiece model whose decode(encode(text)) == text exactly.

Settings that make the round trip exact on code-like text (indentation, newlines, tabs,
arbitrary Unicode): ``normalization_rule_name="identity"``, ``remove_extra_whitespaces=False``,
``add_dummy_prefix=False``, ``allow_whitespace_only_pieces=True``, ``byte_fallback=True``
(characters outside the vocabulary become <0xNN> byte pieces instead of <unk>) and "\\n" as a
user-defined symbol (sentencepiece otherwise has no piece for it). ``split_digits=True``.
Special ids: unk=0, bos=1, eos=2, no pad.

Training data is a bounded, deterministic random sample (``_Sampler``): the inputs are
cut into pieces of at most ``piece_bytes`` (the same cutting as ``tokenize``'s work units:
byte ranges of plain JSONL, runs of parquet row groups, whole compressed files), the pieces are
visited in an order shuffled by ``seed``, and at most ``piece_bytes`` of text is taken from
each until ``sample_bytes`` of text has been read, so huge inputs are never read in full.
Documents are cut into "sentences" of at most ``max_sentence_bytes`` at line boundaries, and
the ``max_sentences`` sentences with the smallest seeded hash are kept (O(max_sentences)
memory).

An existing tokenizer can be used by ``tokenize`` instead (:func:`load_tokenizer`): a sentencepiece
model (e.g. Llama's or Phi-3's 32k ``tokenizer.model``) or a Hugging Face ``tokenizers`` JSON (e.g.
GPT-2's or Llama-3's ``tokenizer.json``), told apart by the file's content; it needs an
end-of-sequence token (its own, or ``--eos-piece``).
"""

from __future__ import annotations

import heapq
import io
import logging
import os
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pretrain.outputs import check_disjoint, check_replaceable

from .errors import DataPrepError
from .fsutil import atomic_write_bytes, unit_hash
from .readers import BadRecord, Document, SkipLog, input_paths, read_piece, resolve_inputs

log = logging.getLogger(__name__)

MODEL_TYPES = ("bpe", "unigram")
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
USER_SYMBOLS = ("\n",)
BYTE_PIECES = 256


@dataclass(frozen=True)
class TokenizerTrainConfig:
    inputs: Sequence[str]
    output: Path
    vocab_size: int
    model_type: str = "bpe"
    max_sentences: int = 200_000
    seed: int = 0
    text_field: str = "text"
    max_sentence_bytes: int = 4096
    num_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    verify_docs: int = 2000  # documents checked for an exact round trip after training
    sample_bytes: int = 2 << 30  # text read from the inputs, at most (plus one document)
    piece_bytes: int = 16 << 20  # input piece size, and text taken per piece at most
    overwrite: bool = False  # replace an existing sentencepiece model at ``output``


@dataclass(frozen=True)
class TokenizerTrainResult:
    path: Path
    vocab_size: int
    sentences: int
    sentence_bytes: int
    documents_seen: int
    verified_docs: int
    seconds: float
    pieces_read: int = 0
    pieces_total: int = 0
    text_bytes_read: int = 0


def split_sentences(text: str, max_bytes: int) -> Iterator[str]:
    """Cut ``text`` into pieces of <= max_bytes UTF-8 bytes, at line ends where possible.

    The pieces concatenate back to ``text``; newlines stay inside the pieces.
    """
    buf: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        n = len(line.encode("utf-8"))
        if size + n > max_bytes and buf:
            yield "".join(buf)
            buf, size = [], 0
        while n > max_bytes:  # a single very long line: hard cut at a character boundary
            cut = line.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
            if not cut:
                cut = line[0]
            yield cut
            line = line[len(cut):]
            n = len(line.encode("utf-8"))
        if line:
            buf.append(line)
            size += n
    if buf:
        yield "".join(buf)


def sample_sentences(
    docs: Iterable[str], max_sentences: int, seed: int, max_bytes: int
) -> tuple[list[str], int]:
    """Bottom-k sample by seeded hash: deterministic and independent of document order.

    Returns (sentences sorted by hash, number of documents seen).
    """
    key = f"data_prep-tokenizer-seed-{seed}".encode()
    heap: list[tuple[float, str]] = []  # max-heap via negated hash
    n_docs = 0
    for text in docs:
        n_docs += 1
        for sent in split_sentences(text, max_bytes):
            if not sent.strip():
                continue
            h = unit_hash(sent.encode("utf-8"), key=key)
            if len(heap) < max_sentences:
                heapq.heappush(heap, (-h, sent))
            elif -heap[0][0] > h:
                heapq.heapreplace(heap, (-h, sent))
    ordered = sorted(heap, key=lambda item: (-item[0], item[1]))
    return [s for _, s in ordered], n_docs


class _Sampler:
    """Documents from a seeded random order of input pieces, within a byte budget."""

    def __init__(self, files: Sequence[Path], cfg: TokenizerTrainConfig, skips: SkipLog) -> None:
        from .units import file_pieces

        self.pieces = [p for f in files for p in file_pieces(f, f.stat().st_size, cfg.piece_bytes)]
        order = list(range(len(self.pieces)))
        random.Random(cfg.seed).shuffle(order)
        self.order = order
        self.cfg = cfg
        self.skips = skips
        self.pieces_read = 0
        self.bytes_read = 0
        self.verify: list[str] = []  # the first documents read, for the round-trip check
        self._verify_bytes = 0

    def __iter__(self) -> Iterator[str]:
        cfg = self.cfg
        for i in self.order:
            if self.bytes_read >= cfg.sample_bytes:
                return
            self.pieces_read += 1
            got = 0
            records = read_piece(self.pieces[i], cfg.text_field, "")
            try:
                for rec in records:
                    if isinstance(rec, BadRecord):
                        self.skips.add(rec)
                        continue
                    assert isinstance(rec, Document)
                    n = len(rec.utf8)
                    got += n
                    self.bytes_read += n
                    if len(self.verify) < cfg.verify_docs and self._verify_bytes + n <= 64 << 20:
                        self.verify.append(rec.text)
                        self._verify_bytes += n
                    yield rec.text
                    if got >= cfg.piece_bytes or self.bytes_read >= cfg.sample_bytes:
                        break
            finally:
                records.close()


def train_tokenizer(cfg: TokenizerTrainConfig) -> TokenizerTrainResult:
    import sentencepiece as spm

    if cfg.model_type not in MODEL_TYPES:
        raise DataPrepError(f"--model-type must be one of {MODEL_TYPES}, got {cfg.model_type!r}")
    min_vocab = BYTE_PIECES + 3 + len(USER_SYMBOLS) + 1
    if cfg.vocab_size < min_vocab:
        raise DataPrepError(
            f"--vocab-size {cfg.vocab_size} is too small: byte fallback alone needs "
            f"{BYTE_PIECES} + 3 special + {len(USER_SYMBOLS)} user pieces; use >= {min_vocab}"
        )
    if cfg.max_sentences < 1:
        raise DataPrepError(f"--max-sentences must be >= 1, got {cfg.max_sentences}")
    out = Path(cfg.output)
    if out.is_dir():
        raise DataPrepError(f"--output {out} is a directory; expected a file path like tok.model")
    if cfg.sample_bytes < 1 or cfg.piece_bytes < 1:
        raise DataPrepError("--sample-bytes and the piece size must be positive")
    files = resolve_inputs(cfg.inputs)
    # the output rule (pretrain.outputs): never an input or inside one; an existing file only if it is a
    # sentencepiece model, and only with --overwrite (written atomically, at the end)
    check_disjoint(out, input_paths(cfg.inputs, files), flag="--output")
    check_replaceable(out, overwrite=cfg.overwrite, owned_by=is_sentencepiece_model, flag="--output")
    t0 = time.time()
    skips = SkipLog()
    sampler = _Sampler(files, cfg, skips)
    sentences, n_docs = sample_sentences(sampler, cfg.max_sentences, cfg.seed, cfg.max_sentence_bytes)
    if not sentences:
        raise DataPrepError(f"--input {' '.join(cfg.inputs)}: no usable documents to train on")
    log.info(
        "sampled %d documents / %.1f MB of text from %d of %d input pieces (seed %d)",
        n_docs, sampler.bytes_read / 1e6, sampler.pieces_read, len(sampler.pieces), cfg.seed,
    )
    n_bytes = sum(len(s.encode("utf-8")) for s in sentences)
    log.info(
        "training %s tokenizer (vocab %d) on %d sentences / %.1f MB sampled from %d documents",
        cfg.model_type, cfg.vocab_size, len(sentences), n_bytes / 1e6, n_docs,
    )
    if skips.total:
        log.warning("skipped %d bad records: %s", skips.total, skips.as_dict())

    spm.set_random_generator_seed(cfg.seed)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            model_type=cfg.model_type,
            vocab_size=cfg.vocab_size,
            byte_fallback=True,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            normalization_rule_name="identity",
            user_defined_symbols=list(USER_SYMBOLS),
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            pad_id=-1,
            max_sentence_length=cfg.max_sentence_bytes + 16,
            input_sentence_size=0,  # we already sampled; keep every sentence we pass
            shuffle_input_sentence=False,
            num_threads=max(1, cfg.num_threads),
            minloglevel=2,
        )
    except RuntimeError as e:
        raise DataPrepError(
            f"sentencepiece training failed for --vocab-size {cfg.vocab_size} on "
            f"{len(sentences)} sentences ({n_bytes} bytes): {e}"
        ) from e
    proto = model.getvalue()

    sp = spm.SentencePieceProcessor(model_proto=proto)
    check_special_ids(sp, where="trained model")
    verified = verify_round_trip(sp, sampler.verify, cfg.verify_docs)
    atomic_write_bytes(out, proto)
    return TokenizerTrainResult(
        out.resolve(), sp.vocab_size(), len(sentences), n_bytes, n_docs, verified, time.time() - t0,
        sampler.pieces_read, len(sampler.pieces), sampler.bytes_read,
    )


def is_sentencepiece_model(path: Path) -> bool:
    """a sentencepiece model (as train-tokenizer writes)"""
    if not path.is_file() or path.is_symlink():
        return False
    import sentencepiece as spm

    try:
        spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError, ValueError):
        return False
    return True


def check_special_ids(sp, where: str) -> None:
    if sp.eos_id() < 0 or sp.unk_id() < 0 or sp.bos_id() < 0:
        raise DataPrepError(
            f"{where}: needs unk, bos and eos ids; got unk={sp.unk_id()} bos={sp.bos_id()} "
            f"eos={sp.eos_id()}"
        )


def verify_round_trip(sp, docs: Iterable[str], limit: int | None) -> int:
    """Check decode(encode(doc)) == doc for up to ``limit`` documents; raise on the first miss."""
    n = 0
    for doc in docs:
        if limit is not None and n >= limit:
            break
        back = sp.decode(sp.encode(doc))
        if back != doc:
            i = next((k for k, (a, b) in enumerate(zip(doc, back, strict=False)) if a != b), min(len(doc), len(back)))
            raise DataPrepError(
                f"tokenizer round trip is not exact: document {n} differs at char {i}: "
                f"expected {doc[max(0, i - 20):i + 20]!r}, got {back[max(0, i - 20):i + 20]!r}"
            )
        n += 1
    return n


def load_sentencepiece(path):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    sp.Load(str(path))
    return sp


# ---- tokenizers for ``tokenize``: a sentencepiece model or a Hugging Face tokenizer.json ----------

EOS_NAMES = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>")  # a tokenizer.json's EOS, by name
_BOS_NAMES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>")
_UNK_NAMES = ("<unk>", "<|unk|>", "[UNK]")
ROUND_TRIP_PROBE = "Hello, World!\n\tdef f(x):  return x ** 2  # caf\u00e9 \u65e5\u672c \U0001f642\n\n"


class Tokenizer:
    """The one interface ``tokenize`` (and the trainer's tools) use, whatever the file.

    ``encode(text)`` gives the ids of ``text`` alone (no BOS or EOS added), ``decode(ids)`` the
    text back, ``vocab_size`` bounds every id, ``eos_id`` is the tokenizer's own end-of-sequence id
    (None without one), ``token_id(piece)`` the id of one of its tokens (None if it has none),
    ``special`` {"bos"|"eos"|"unk": (id, piece)} for those it has. Load with :func:`load_tokenizer`.
    """

    kind: str
    path: Path
    vocab_size: int
    eos_id: int | None
    special: dict[str, tuple[int, str]]

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def token_id(self, piece: str) -> int | None:
        raise NotImplementedError


class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.sp = sp = load_sentencepiece(path)
        self.encode = sp.encode  # type: ignore[method-assign]  # called per document: no wrapper
        self.vocab_size = sp.vocab_size()
        self.eos_id = sp.eos_id() if sp.eos_id() >= 0 else None
        self.special = {name: (i, sp.id_to_piece(i))
                        for name, i in (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("unk", sp.unk_id())) if i >= 0}

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def token_id(self, piece: str) -> int | None:
        pid = self.sp.piece_to_id(piece)  # unknown pieces map to unk
        return pid if 0 <= pid < self.vocab_size and self.sp.id_to_piece(pid) == piece else None


class HFTokenizer(Tokenizer):
    """A ``tokenizers`` JSON (GPT-2 / Llama-3 style tokenizer.json), used exactly as saved except:
    no truncation or padding, no post-processor tokens (``add_special_tokens=False``: BOS/EOS are
    ours to add), and special-token text inside a document encoded as plain text (a document
    containing "<|endoftext|>" never produces the EOS id)."""

    kind = "tokenizers"

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer as _Tokenizer

        self.path = Path(path)
        tok = _Tokenizer.from_file(str(path))
        tok.no_truncation()
        tok.no_padding()
        tok.encode_special_tokens = True
        self.tok = tok
        vocab = tok.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1 if vocab else 0  # ids may have gaps: bound them all
        specials = {t.content: i for i, t in sorted(tok.get_added_tokens_decoder().items()) if t.special}
        self.special = {}
        for name, names in (("bos", _BOS_NAMES), ("eos", EOS_NAMES), ("unk", _UNK_NAMES)):
            found = next((n for n in names if n in specials), None)
            if found is not None:
                self.special[name] = (specials[found], found)
        self.eos_id = self.special["eos"][0] if "eos" in self.special else None

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_id(self, piece: str) -> int | None:
        return self.tok.token_to_id(piece)


def tokenizer_kind(path: Path) -> str:
    """The kind of a tokenizer file: a JSON object is a tokenizer.json, anything else a sentencepiece model."""
    with open(path, "rb") as f:
        head = f.read(256)
    return "tokenizers" if head.lstrip(b" \t\r\n")[:1] == b"{" else "sentencepiece"


def load_tokenizer(path: Path) -> Tokenizer:
    """A sentencepiece model or a ``tokenizers`` JSON, told apart by the file's content, with a clear
    error if the file is missing or is neither."""
    path = Path(path)
    if not path.is_file():
        raise DataPrepError(f"--tokenizer {path}: no such file (expected a sentencepiece .model or a Hugging "
                            f"Face tokenizer.json; train one with `train-tokenizer`)")
    if tokenizer_kind(path) == "tokenizers":
        try:
            tok: Tokenizer = HFTokenizer(path)
        except Exception as e:  # tokenizers raises plain Exception for a bad file
            raise DataPrepError(f"--tokenizer {path}: a JSON file but not a Hugging Face tokenizers file "
                                f"(tokenizer.json, as written by tokenizers' Tokenizer.save): {e}") from e
    else:
        try:
            tok = SentencePieceTokenizer(path)
        except (OSError, RuntimeError) as e:
            raise DataPrepError(f"--tokenizer {path}: not a sentencepiece model (nor a tokenizer.json): {e}") from e
    if tok.vocab_size < 1:
        raise DataPrepError(f"--tokenizer {path}: the tokenizer has an empty vocabulary")
    return tok


def resolve_eos(tok: Tokenizer, path, eos_piece: str | None = None) -> int:
    """The id appended after every document: the tokenizer's EOS, or the id of ``eos_piece``.

    A sentencepiece model's EOS piece (ours, Llama's or Phi-3's ``tokenizer.model``: ``</s>`` = 2);
    a tokenizer.json's special token named one of :data:`EOS_NAMES` (GPT-2's ``<|endoftext|>``,
    Llama-3's ``<|end_of_text|>``). A tokenizer without one needs ``--eos-piece``.
    """
    if eos_piece is not None:
        pid = tok.token_id(eos_piece)
        if pid is None:
            raise DataPrepError(f"--eos-piece {eos_piece!r}: no such piece in --tokenizer {path}")
        return pid
    if tok.eos_id is None:
        if tok.kind == "sentencepiece":
            what = "the model has no end-of-sequence piece (eos_id = -1)"
        else:
            what = f"the tokenizer has no end-of-sequence token (no special token named {' or '.join(EOS_NAMES)})"
        raise DataPrepError(
            f"--tokenizer {path}: {what}, which is appended after every document; pass --eos-piece PIECE "
            f"naming one of its tokens (e.g. '<|endoftext|>'), or train a model with `train-tokenizer`"
        )
    return tok.eos_id
