"""Command line: ``python -m data_prep {demo-corpus,train-tokenizer,tokenize} ...``."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from pretrain.outputs import OutputError

from .errors import DataPrepError

log = logging.getLogger("data_prep")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _size(text: str) -> int:
    """Bytes, optionally with a k/m/g suffix (powers of 1024): 67108864, 64m, 512k."""
    t = text.strip().lower().rstrip("b")
    mult = 1
    if t and t[-1] in "kmg":
        mult = 1024 ** ("kmg".index(t[-1]) + 1)
        t = t[:-1]
    try:
        number = float(t)
        if not math.isfinite(number):
            raise ValueError(text)
        value = int(number * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size in bytes like 67108864 or 64m, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive size, got {text!r}")
    return value


def _sources(text: str) -> tuple[str, ...]:
    """Comma-separated demo-corpus sources, e.g. stdlib,packages (kept in that canonical order)."""
    from .corpus import SOURCES

    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in SOURCES]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {','.join(SOURCES)}, got {text!r}")
    return tuple(n for n in SOURCES if n in names)


def _mb_cap(text: str) -> float | None:
    """A size in MB; 0 or 'none': no cap."""
    if text.strip().lower() in ("0", "none"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size in MB, 0 or none, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive size in MB, 0 or none, got {text!r}")
    return value


def _mb(text: str) -> float:
    """A positive, finite size in MB."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size in MB, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive, finite size in MB, got {text!r}")
    return value


def _cores() -> int:
    from .units import default_workers

    return default_workers()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_prep",
        description="Prepare pretraining data: demo corpus, sentencepiece tokenizer, packed MDS tokens.",
    )
    quiet_help = "only warnings and errors; no progress bar"
    p.add_argument("-q", "--quiet", action="store_true", help=quiet_help)
    # -q is accepted after the subcommand too (SUPPRESS: don't reset a top-level -q)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=quiet_help)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser(
        "demo-corpus",
        parents=[common],
        help="write a real-text corpus: stdlib docstrings + Python reference manual "
        "(+ installed packages' docstrings and docs with --sources stdlib,packages)",
        description="Extract docstrings (parsed with ast, never imported) and documentation text into "
        "SlimPajama layout: OUTPUT/train/chunkN/example_train_K.jsonl.zst, source in "
        "meta.redpajama_set_name (docstrings: RedPajamaGitHub, prose: RedPajamaBook). Source "
        "'stdlib' (default, ~2.6 MB): the standard library's docstrings and the pydoc reference "
        "manual topics. Source 'packages': every distribution installed in the interpreter's "
        "site-packages: .py docstrings (tests skipped), shipped .md/.rst/.txt docs and METADATA long "
        "descriptions, at most --max-mb-per-dist MB from any one distribution; with it, duplicate "
        "documents and repeated docstrings are dropped (first kept). Text containing U+2581 "
        "(sentencepiece's meta space, which no sentencepiece model round-trips) is left out. "
        "The output is byte-identical for a given installation (see data_prep/corpus.py).",
    )
    d.add_argument("--output", required=True, type=Path, help="corpus directory")
    d.add_argument("--sources", type=_sources, default=("stdlib",), metavar="LIST",
                   help="comma-separated: stdlib, packages (default: stdlib, the small demo corpus; "
                        "stdlib,packages for a larger one, tens of MB in a full environment)")
    d.add_argument("--site-packages", type=Path, action="append", default=None, metavar="DIR",
                   help="site-packages directory for the packages source (repeatable; default: the "
                        "running interpreter's, sysconfig purelib/platlib)")
    d.add_argument("--max-mb-per-dist", type=_mb_cap, default=10.0, metavar="MB",
                   help="packages source: cap on the text taken from one distribution, so that a huge "
                        "generated SDK does not dominate (default 10; 0 or none: no cap)")
    d.add_argument("--max-mb", type=_mb, default=None, help="cap on total text size in MB (10^6 bytes)")
    d.add_argument("--docs-per-file", type=_positive_int, default=256, help="documents per .jsonl.zst file (default 256)")
    d.add_argument("--overwrite", action="store_true",
                   help="replace an existing demo corpus at --output (anything else is never replaced)")

    t = sub.add_parser(
        "train-tokenizer",
        parents=[common],
        help="train a sentencepiece model with an exact decode(encode(text)) round trip",
        description="Train a byte-fallback sentencepiece model (unk=0, bos=1, eos=2, no pad) on a "
        "bounded random sample of the input documents (deterministic by --seed): input pieces are "
        "visited in a seeded random order until --sample-bytes of text has been read, so huge "
        "inputs are never read in full. An existing .model (e.g. Llama's) can be passed to "
        "`tokenize` instead.",
    )
    t.add_argument("--input", required=True, nargs="+", metavar="PATH", help="files, directories or globs")
    t.add_argument("--output", required=True, type=Path, help="model file to write, e.g. tok.model")
    t.add_argument("--vocab-size", required=True, type=_positive_int)
    t.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe")
    t.add_argument("--max-sentences", type=_positive_int, default=200_000,
                   help="training sentences (document pieces of <= 4 KB) to sample (default 200000)")
    t.add_argument("--sample-bytes", type=_size, default=2 << 30, metavar="BYTES",
                   help="text to read from the inputs at most, e.g. 500m (default 2g); at most 16m of it "
                        "from each input piece (a compressed file, 16m of a .jsonl, parquet row groups)")
    t.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    t.add_argument("--text-field", default="text", help="JSON/parquet field holding the text (default: text)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace an existing sentencepiece model at --output (anything else is never replaced)")

    k = sub.add_parser(
        "tokenize",
        parents=[common],
        help="tokenize + pack documents into MDS shards with a manifest (parallel, resumable)",
        description="Tokenize documents, append EOS, pack into samples of seq_len+1 tokens and "
        "write mosaicml-streaming MDS to OUTPUT/train and OUTPUT/val (or OUTPUT/<split>/<source>/ "
        "with --per-source), then OUTPUT/manifest.json. Inputs are cut into work units processed "
        "by --workers processes; rerunning the same command after an interruption (even kill -9) "
        "resumes and gives output identical to an uninterrupted run, whatever --workers is.",
    )
    k.add_argument("--input", required=True, nargs="+", metavar="PATH",
                   help="files, directories or globs (.jsonl, .jsonl.zst, .jsonl.gz, .json.gz, .txt, .parquet)")
    k.add_argument("--output", required=True, type=Path, help="dataset directory")
    k.add_argument("--tokenizer", required=True, type=Path,
                   help="sentencepiece .model file (ours, or e.g. Llama's / Phi-3's tokenizer.model) or Hugging "
                        "Face tokenizer.json (e.g. GPT-2's or Llama-3's), told apart by the file's content")
    k.add_argument("--seq-len", required=True, type=_positive_int, help="model context length (samples hold seq_len+1 tokens)")
    k.add_argument("--val-fraction", type=float, default=0.01, help="fraction of documents held out (default 0.01)")
    k.add_argument("--workers", type=_positive_int, default=None,
                   help=f"worker processes (default: all cores, here {_cores()}); does not change the output")
    k.add_argument("--shard-size-limit", type=_size, default=1 << 26, metavar="BYTES",
                   help="uncompressed bytes per MDS shard, e.g. 64m (default 64m)")
    k.add_argument("--compression", choices=("zstd", "none"), default="zstd")
    k.add_argument("--text-field", default="text", help="JSON/parquet field holding the text (default: text)")
    k.add_argument("--per-source", action="store_true",
                   help="one MDS dataset per source in OUTPUT/<split>/<source>/ (source: --source-field)")
    k.add_argument("--source-field", default="meta.redpajama_set_name", metavar="FIELD",
                   help="dotted JSON path or parquet column (or struct.field) naming a document's source; "
                        "documents are counted per source in the manifest (default: meta.redpajama_set_name, "
                        "SlimPajama's; missing -> 'unknown')")
    k.add_argument("--unit-size", type=_size, default=None, metavar="BYTES",
                   help="input bytes per work unit (resume granularity), e.g. 64m "
                        "(default: total input / 512, between 1m and 64m)")
    k.add_argument("--strict", action="store_true",
                   help="stop at the first bad record with an error naming its file and line "
                        "(default: skip, count and log it)")
    k.add_argument("--eos-piece", default=None, metavar="PIECE",
                   help="piece appended after each document (default: the tokenizer's EOS: a .model's EOS "
                        "piece, e.g. </s>; a tokenizer.json's special token </s>, <|endoftext|>, "
                        "<|end_of_text|> or <eos>)")
    k.add_argument("--overwrite", action="store_true",
                   help="replace an existing different dataset (or discard an unfinished run with other settings)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "demo-corpus":
            return _demo_corpus(args)
        if args.command == "train-tokenizer":
            return _train_tokenizer(args)
        if args.command == "tokenize":
            return _tokenize(args)
    except (DataPrepError, OutputError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted" + ("; rerun the same command to resume" if args.command == "tokenize" else ""),
              file=sys.stderr)
        return 130
    raise AssertionError(args.command)


def _demo_corpus(args: argparse.Namespace) -> int:
    from .corpus import MB, DemoCorpusConfig, build_demo_corpus

    res = build_demo_corpus(
        DemoCorpusConfig(
            output=args.output, max_mb=args.max_mb, docs_per_file=args.docs_per_file, sources=args.sources,
            site_packages=tuple(args.site_packages) if args.site_packages else None,
            max_mb_per_dist=args.max_mb_per_dist, overwrite=args.overwrite,
        )
    )
    if args.sources == ("stdlib",):  # the demo's line, as before --sources
        sources = ", ".join(f"{k}: {v}" for k, v in res.by_source.items())
    else:
        sources = ", ".join(f"{k}: {v} / {res.bytes_by_source.get(k, 0) / MB:.2f} MB"
                            for k, v in res.by_source.items())
    print(
        f"wrote {res.documents} documents ({sources}), {res.text_bytes / MB:.2f} MB of text, "
        f"{res.compressed_bytes / MB:.2f} MB compressed in {len(res.files)} files under "
        f"{Path(args.output) / 'train'}"
    )
    if res.distributions:
        capped = ", ".join(f"{k} ({v / MB:.2f} MB)" for k, v in res.capped.items())
        print(f"packages: {res.distributions} installed distributions read"
              + (f"; capped at --max-mb-per-dist {args.max_mb_per_dist:g}: {capped}" if capped else ""))
    if res.dedup is not None:
        st = res.dedup
        print(
            f"dedup removed {st.removed_bytes / MB:.2f} MB: {st.documents} duplicate documents "
            f"({st.document_bytes / MB:.2f} MB), {st.docstrings} repeated docstrings "
            f"({st.docstring_bytes / MB:.2f} MB), {st.emptied} modules left without a new docstring"
        )
    return 0


def _train_tokenizer(args: argparse.Namespace) -> int:
    from .tokenizer import TokenizerTrainConfig, train_tokenizer

    res = train_tokenizer(
        TokenizerTrainConfig(
            inputs=args.input,
            output=args.output,
            vocab_size=args.vocab_size,
            model_type=args.model_type,
            max_sentences=args.max_sentences,
            seed=args.seed,
            text_field=args.text_field,
            sample_bytes=args.sample_bytes,
            overwrite=args.overwrite,
        )
    )
    print(
        f"wrote {res.path} (vocab {res.vocab_size}) trained on {res.sentences} sentences / "
        f"{res.sentence_bytes / 1e6:.2f} MB from {res.documents_seen} documents "
        f"({res.text_bytes_read / 1e6:.2f} MB read from {res.pieces_read} of {res.pieces_total} input pieces) "
        f"in {res.seconds:.1f}s; round trip exact on {res.verified_docs} documents"
    )
    return 0


def _tokenize(args: argparse.Namespace) -> int:
    from .pipeline import TokenizeConfig, run_tokenize
    from .units import default_workers

    m = run_tokenize(
        TokenizeConfig(
            inputs=args.input,
            output=args.output,
            tokenizer=args.tokenizer,
            seq_len=args.seq_len,
            val_fraction=args.val_fraction,
            workers=args.workers or default_workers(),
            shard_size_limit=args.shard_size_limit,
            compression=args.compression,
            text_field=args.text_field,
            source_field=args.source_field,
            per_source=args.per_source,
            unit_size=args.unit_size,
            strict=args.strict,
            eos_piece=args.eos_piece,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    )
    tr, va = m["splits"]["train"], m["splits"]["val"]
    skipped = sum(m["skipped"].values())
    run = m.get("run", {})
    print(
        f"wrote {args.output}: train {tr['samples']} samples / {tr['tokens']} tokens "
        f"({tr['documents']} docs), val {va['samples']} samples / {va['tokens']} tokens "
        f"({va['documents']} docs), {skipped} records skipped"
        + (f" {m['skipped']} (see {Path(args.output) / 'skipped.jsonl'})" if skipped else "")
        + f", {m['wall_time_s']:.1f}s, {m['tokens_per_s']:.0f} tokens/s"
        + (f", {run['text_mb_per_s']:.2f} MB/s of text with {run['workers']} workers" if run.get("workers") else "")
        + (f", {run['units_reused']} of {m['units']} units reused" if run.get("units_reused") else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
