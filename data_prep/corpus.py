"""``demo-corpus``: a small corpus of real English+code text available on every machine.

Sources (never imported, only parsed with :mod:`ast`, so no module side effects run):

* the docstrings of the Python standard library under ``sysconfig.get_paths()["stdlib"]``
  (one document per module: the module docstring followed by every class/function docstring
  under a heading line with its qualified name) -> ``redpajama_set_name = "RedPajamaGitHub"``;
* the Python reference manual topics in ``pydoc_data/topics.py`` (one document per topic)
  -> ``"RedPajamaBook"``.

Output uses SlimPajama's layout: ``DIR/train/chunk{1,2}/example_train_{K}.jsonl.zst`` with
one ``{"text": ..., "meta": {"redpajama_set_name": ...}}`` object per line. Documents are
ordered by a stable hash of their id (so every file and every ``--max-mb`` prefix is a mix of
both sources); the output is byte-identical for a given Python installation.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

from .errors import DataPrepError
from .fsutil import atomic_write_bytes, unit_hash

log = logging.getLogger(__name__)

MB = 1_000_000
GITHUB = "RedPajamaGitHub"
BOOK = "RedPajamaBook"

# Directory names never descended into when collecting stdlib sources.
SKIP_DIRS = frozenset(
    {
        "site-packages",
        "dist-packages",
        "__pycache__",
        "test",
        "tests",
        "idle_test",  # idlelib/idle_test
        "lib-dynload",
        "pydoc_data",  # handled separately (reference manual topics)
    }
)
_FILE_RE = re.compile(r"^example_train_(\d+)\.jsonl\.zst$")


@dataclass(frozen=True)
class DemoCorpusConfig:
    output: Path
    max_mb: Optional[float] = None  # cap on total UTF-8 text size, in MB (10**6 bytes)
    docs_per_file: int = 256
    num_chunks: int = 2  # files are dealt round-robin to train/chunk1..chunkN
    stdlib_dir: Optional[Path] = None  # default: sysconfig.get_paths()["stdlib"]
    zstd_level: int = 10


@dataclass(frozen=True)
class DemoCorpusResult:
    documents: int
    text_bytes: int
    files: list[Path]
    by_source: dict[str, int]

    @property
    def compressed_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


# --------------------------------------------------------------------------------------------
# Extraction


def stdlib_sources(stdlib_dir: Union[str, Path]) -> list[tuple[str, Path]]:
    """(module name, path) of every stdlib .py file outside test/site-packages dirs, sorted."""
    root = Path(stdlib_dir)
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames
            if d not in SKIP_DIRS and not d.startswith((".", "config-")) and d.isidentifier()
        )
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            path = Path(dirpath) / name
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if not parts or not all(p.isidentifier() for p in parts):
                continue  # e.g. "python-config.py"
            out.append((".".join(parts), path))
    out.sort(key=lambda item: str(item[1].relative_to(root)))
    return out


class _DocCollector(ast.NodeVisitor):
    def __init__(self, module: str) -> None:
        self.stack = [module]
        self.sections: list[tuple[str, str]] = []

    def _visit_def(self, node: Union[ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef], kind: str) -> None:
        self.stack.append(node.name)
        doc = ast.get_docstring(node, clean=True)
        if doc and doc.strip():
            self.sections.append((f"{kind} {'.'.join(self.stack)}", doc))
        self.generic_visit(node)
        self.stack.pop()

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._visit_def(node, "class")

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._visit_def(node, "def")

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._visit_def(node, "async def")


def module_document(module: str, path: Union[str, Path]) -> Optional[str]:
    """The docstring document of one module, or None if it has no docstrings / cannot parse."""
    try:
        tree = ast.parse(Path(path).read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError, UnicodeDecodeError) as e:
        log.debug("skipping %s: %s", path, e)
        return None
    parts = [f"# module {module}"]
    mdoc = ast.get_docstring(tree, clean=True)
    if mdoc and mdoc.strip():
        parts.append(mdoc)
    collector = _DocCollector(module)
    collector.visit(tree)
    if len(parts) == 1 and not collector.sections:
        return None
    for heading, doc in collector.sections:
        parts.append(f"## {heading}\n\n{doc}")
    return "\n\n".join(parts) + "\n"


def pydoc_topics(stdlib_dir: Union[str, Path]) -> dict[str, str]:
    """The reference manual topics dict of ``pydoc_data/topics.py`` (parsed, not imported)."""
    path = Path(stdlib_dir) / "pydoc_data" / "topics.py"
    if not path.is_file():
        log.warning("no %s; the demo corpus will have no %s documents", path, BOOK)
        return {}
    tree = ast.parse(path.read_bytes(), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "topics" for t in node.targets
        ):
            topics = ast.literal_eval(node.value)
            if isinstance(topics, dict):
                return {str(k): v for k, v in topics.items() if isinstance(v, str) and v.strip()}
    raise DataPrepError(f"{path}: expected a dict literal assignment `topics = {{...}}`")


def iter_demo_documents(stdlib_dir: Union[str, Path]) -> Iterator[tuple[str, str]]:
    """Yield (text, redpajama_set_name) in a stable hash order of the document ids.

    Sources are parsed lazily in that order, so a size cap only parses what it needs.
    """
    topics = pydoc_topics(stdlib_dir)
    items: list[tuple[float, str, str, Union[Path, str]]] = []
    for module, path in stdlib_sources(stdlib_dir):
        doc_id = f"stdlib:{module}"
        items.append((unit_hash(doc_id.encode()), doc_id, module, path))
    for topic in sorted(topics):
        doc_id = f"pydoc:{topic}"
        items.append((unit_hash(doc_id.encode()), doc_id, topic, topics[topic]))
    items.sort(key=lambda it: (it[0], it[1]))
    for _, doc_id, name, payload in items:
        if doc_id.startswith("pydoc:"):
            text = str(payload)
            yield (text if text.endswith("\n") else text + "\n"), BOOK
        else:
            text = module_document(name, payload)
            if text is not None:
                yield text, GITHUB


# --------------------------------------------------------------------------------------------
# Writing


def build_demo_corpus(cfg: DemoCorpusConfig) -> DemoCorpusResult:
    if cfg.max_mb is not None and cfg.max_mb <= 0:
        raise DataPrepError(f"--max-mb must be > 0, got {cfg.max_mb}")
    if cfg.docs_per_file < 1:
        raise DataPrepError(f"--docs-per-file must be >= 1, got {cfg.docs_per_file}")
    stdlib_dir = Path(cfg.stdlib_dir or sysconfig.get_paths()["stdlib"])
    if not stdlib_dir.is_dir():
        raise DataPrepError(f"standard library directory {stdlib_dir} does not exist")
    limit = None if cfg.max_mb is None else int(cfg.max_mb * MB)

    import zstandard

    cctx = zstandard.ZstdCompressor(level=cfg.zstd_level)
    train_dir = Path(cfg.output) / "train"
    written: list[Path] = []
    by_source: dict[str, int] = {}
    total_bytes = 0
    n_docs = 0
    batch: list[bytes] = []

    def flush() -> None:
        k = len(written)
        chunk = k % cfg.num_chunks + 1
        index = k // cfg.num_chunks
        path = train_dir / f"chunk{chunk}" / f"example_train_{index}.jsonl.zst"
        atomic_write_bytes(path, cctx.compress(b"".join(batch)))
        written.append(path)
        batch.clear()

    for text, source in iter_demo_documents(stdlib_dir):
        size = len(text.encode("utf-8"))
        if limit is not None and total_bytes + size > limit:
            if n_docs == 0:
                continue  # a cap smaller than the first document: look for a smaller one
            break
        line = json.dumps({"text": text, "meta": {"redpajama_set_name": source}}, ensure_ascii=False)
        batch.append(line.encode("utf-8") + b"\n")
        total_bytes += size
        n_docs += 1
        by_source[source] = by_source.get(source, 0) + 1
        if len(batch) >= cfg.docs_per_file:
            flush()
    if batch:
        flush()
    if n_docs == 0:
        raise DataPrepError(f"no documents found under {stdlib_dir} (within --max-mb {cfg.max_mb})")
    _remove_stale(train_dir, set(written))
    return DemoCorpusResult(n_docs, total_bytes, written, dict(sorted(by_source.items())))


def _remove_stale(train_dir: Path, keep: set[Path]) -> None:
    """Delete example_train_K.jsonl.zst files of an earlier, larger run (only our own names)."""
    if not train_dir.is_dir():
        return
    for chunk in sorted(train_dir.iterdir()):
        if not (chunk.is_dir() and re.fullmatch(r"chunk\d+", chunk.name)):
            continue
        for f in sorted(chunk.iterdir()):
            if _FILE_RE.match(f.name) and f not in keep:
                log.info("removing stale %s from an earlier run", f)
                f.unlink()
