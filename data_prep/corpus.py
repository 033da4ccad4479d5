"""``demo-corpus``: a corpus of real English+code text available on every machine.

Sources, chosen with ``--sources`` (comma-separated, default ``stdlib``); nothing is ever
imported, ``.py`` files are only parsed with :mod:`ast`, so no module side effects run:

* ``stdlib`` (the default; about 2.6 MB):

  - the docstrings of the Python standard library under ``sysconfig.get_paths()["stdlib"]``
    (one document per module: ``# module NAME``, the module docstring, then every
    class/function docstring under a ``## class|def QUALNAME`` heading)
    -> ``redpajama_set_name = "RedPajamaGitHub"``;
  - the Python reference manual topics in ``pydoc_data/topics.py`` (one document per topic)
    -> ``"RedPajamaBook"``.

* ``packages``: every installed distribution in the running interpreter's site-packages
  (``sysconfig`` purelib/platlib, or the ``--site-packages`` directories; found with
  ``importlib.metadata.distributions`` and their ``RECORD`` file lists):

  - the docstrings of every ``.py`` module, in the same per-module format as the stdlib's
    (``test``/``tests`` directories, ``test_*.py``, ``*_test.py`` and ``conftest.py`` skipped)
    -> ``"RedPajamaGitHub"``;
  - documentation shipped in the package: ``.md``/``.rst``/``.txt`` files (not in test or
    ``.dist-info`` directories, not license/notice/authors/requirements/CMake files, valid
    UTF-8 without NUL bytes, at most 1 MB, and mostly letters, which drops numeric data
    tables) and each distribution's long description from its ``METADATA``
    -> ``"RedPajamaBook"``.

  With ``packages`` selected, documents are deduplicated in output order (first one kept):
  a document whose whitespace-normalized text (stripped, whitespace runs collapsed) was
  already written is dropped, and so is every module/class/function docstring that an
  earlier module document already contained (vendored copies, re-exports, generated
  boilerplate); a module left with no docstring is dropped. The stdlib-only corpus is never
  deduplicated, so its output is the same as before ``--sources`` existed.

  ``--max-mb-per-dist`` (default 10) caps the text taken from one distribution: once its next
  document would pass the cap, its remaining files are skipped unparsed. Without it, a
  generated SDK dominates (``oci``, a mosaicml-streaming dependency, has 115 MB of API-client
  docstrings, 70% of an uncapped corpus of this repository's environment).

With either source, docstrings and documents containing U+2581 (sentencepiece's meta space,
which decodes to a space, so that no sentencepiece model round-trips them) are left out.

Output uses SlimPajama's layout: ``DIR/train/chunk{1,2}/example_train_{K}.jsonl.zst`` with
one ``{"text": ..., "meta": {"redpajama_set_name": ...}}`` object per line. Documents are
ordered by a stable hash of their id (``stdlib:MODULE``, ``pydoc:TOPIC``, ``site:RELPATH``,
``sitedoc:RELPATH``, ``metadata:DIST``), so every file and every ``--max-mb`` prefix is a mix
of all sources, and a capped corpus is a prefix of the uncapped one; the output is
byte-identical for a given Python installation.
"""

from __future__ import annotations

import ast
import dataclasses
import email.parser
import hashlib
import json
import logging
import math
import os
import re
import sysconfig
import textwrap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pretrain.outputs import staged_dir

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

SOURCES = ("stdlib", "packages")
# Directory names never descended into when collecting site-packages files.
SITE_SKIP_DIRS = frozenset({"__pycache__", "test", "tests", "_test", "_tests", "idle_test"})
_TEST_FILE_RE = re.compile(r"^(test_.*|.*_test|conftest)\.py$")
DOC_SUFFIXES = (".md", ".rst", ".txt")
MAX_DOC_FILE_BYTES = MB
# sentencepiece's meta space: decode() turns it into " ", so no sentencepiece model round-trips a
# text containing it (train-tokenizer's round-trip check fails); docstrings/documents with it are left out.
SP_META_SPACE = "\u2581"
MIN_LETTER_FRACTION = 0.5  # of the non-whitespace characters of a documentation file
# Documentation-looking file names that are not prose (compared lower-cased, without suffix).
_NON_DOC_RE = re.compile(
    r"^(.*licen[cs]es?|copying|copyright|notice|authors|contributors|third[-_]?party(notices)?|patents|"
    r"requirements|constraints|cmakelists|record|top_level|entry_points|dependency_links|"
    r"namespace_packages|sources|requires|installed-files|installer|requested|wheel|vendor|"
    r"not-zip-safe)([-_. ].*)?$"
)


@dataclass(frozen=True)
class DemoCorpusConfig:
    output: Path
    max_mb: float | None = None  # cap on total UTF-8 text size, in MB (10**6 bytes)
    docs_per_file: int = 256
    num_chunks: int = 2  # files are dealt round-robin to train/chunk1..chunkN
    stdlib_dir: Path | None = None  # default: sysconfig.get_paths()["stdlib"]
    zstd_level: int = 10
    sources: tuple[str, ...] = ("stdlib",)  # a subset of SOURCES
    # site-packages roots of the "packages" source; default: the running interpreter's
    # sysconfig purelib and platlib
    site_packages: tuple[Path, ...] | None = None
    dedup: bool | None = None  # default: on exactly when "packages" is a source
    # cap on the text taken from any one installed distribution (None: no cap); keeps a huge
    # generated SDK (e.g. oci's API clients, 115 MB of docstrings) from dominating the corpus
    max_mb_per_dist: float | None = 10.0
    overwrite: bool = False  # replace an existing demo corpus at ``output`` (anything else is never replaced)


@dataclass
class DedupStats:
    documents: int = 0  # documents dropped as exact (whitespace-normalized) duplicates
    document_bytes: int = 0
    docstrings: int = 0  # module/class/function docstrings dropped as repeats
    docstring_bytes: int = 0
    emptied: int = 0  # module documents dropped because every docstring was a repeat

    @property
    def removed_bytes(self) -> int:
        return self.document_bytes + self.docstring_bytes


@dataclass(frozen=True)
class DemoCorpusResult:
    documents: int
    text_bytes: int
    files: list[Path]
    by_source: dict[str, int]
    bytes_by_source: dict[str, int] = field(default_factory=dict)
    dedup: DedupStats | None = None  # None: not deduplicated
    distributions: int = 0  # installed distributions scanned for the "packages" source
    capped: dict[str, int] = field(default_factory=dict)  # distribution -> text bytes taken, if capped

    @property
    def compressed_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


# --------------------------------------------------------------------------------------------
# Extraction


def stdlib_sources(stdlib_dir: str | Path) -> list[tuple[str, Path]]:
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


_DEF_KINDS = {ast.ClassDef: "class", ast.FunctionDef: "def", ast.AsyncFunctionDef: "async def"}


def _doc_sections(tree: ast.AST, module: str) -> list[tuple[str, str]]:
    """(``class|def|async def QUALNAME``, docstring) of every class/function, in source order.

    Only statements are walked (definitions cannot occur inside expressions), so deeply nested
    expressions in generated code do not hit the recursion limit; the order is that of a full
    ``ast.NodeVisitor`` walk.
    """
    sections: list[tuple[str, str]] = []
    stack = [module]

    def walk(node: ast.AST) -> None:
        kind = _DEF_KINDS.get(type(node))
        if kind is not None:
            stack.append(node.name)  # type: ignore[attr-defined]
            doc = ast.get_docstring(node, clean=True)  # type: ignore[arg-type]
            if doc and doc.strip():
                sections.append((f"{kind} {'.'.join(stack)}", doc))
        for _, value in ast.iter_fields(node):
            if isinstance(value, list):
                for item in value:
                    if isinstance(item, (ast.stmt, ast.excepthandler, ast.match_case)):
                        walk(item)
        if kind is not None:
            stack.pop()

    walk(tree)
    return sections


def module_document(module: str, path: str | Path, dedup: Deduper | None = None) -> str | None:
    """The docstring document of one module, or None if it has no docstrings / cannot parse.

    With ``dedup``, docstrings already seen (in accepted documents, or earlier in this one)
    are left out, and None is returned when none is left.
    """
    try:
        tree = ast.parse(Path(path).read_bytes(), filename=str(path))
        mdoc = ast.get_docstring(tree, clean=True)
        defs = _doc_sections(tree, module)
    except (SyntaxError, ValueError, OSError, UnicodeDecodeError, RecursionError, MemoryError) as e:
        log.debug("skipping %s: %s", path, e)
        return None
    sections: list[tuple[str | None, str]] = [(None, mdoc)] if mdoc and mdoc.strip() else []
    sections += defs
    sections = [sec for sec in sections if SP_META_SPACE not in sec[1]]
    if not sections:
        return None
    if dedup is not None:
        sections = dedup.new_sections(sections)
        if not sections:
            return None
    parts = [f"# module {module}"]
    for heading, doc in sections:
        parts.append(doc if heading is None else f"## {heading}\n\n{doc}")
    return "\n\n".join(parts) + "\n"


def pydoc_topics(stdlib_dir: str | Path) -> dict[str, str]:
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


def default_site_packages() -> tuple[Path, ...]:
    """The running interpreter's site-packages directories (sysconfig purelib, platlib)."""
    paths = sysconfig.get_paths()
    out: list[Path] = []
    for key in ("purelib", "platlib"):
        p = Path(paths[key])
        if p.is_dir() and p not in out:
            out.append(p)
    return tuple(out)


def _norm_dist_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class SiteSources:
    """What the "packages" source reads, found from the distributions' RECORD file lists."""

    distributions: list[tuple[str, object]]  # (normalized name, importlib.metadata.Distribution)
    modules: list[tuple[str, str, Path, str]]  # (module name, relative path, path, distribution)
    docs: list[tuple[str, Path, str]]  # (relative path, path, distribution)


def site_sources(roots: Iterable[str | Path]) -> SiteSources:
    """Distributions installed in ``roots`` and their .py / documentation files.

    A distribution name found in several roots is taken from the first; so is a relative path
    listed by several distributions or roots (namespace packages, shadowed installs).
    Distributions without a RECORD (file list) contribute only their METADATA description.
    """
    from importlib.metadata import distributions

    out = SiteSources([], [], [])
    names: set[str] = set()
    taken: set[str] = set()
    for root in map(Path, roots):
        found = []
        for dist in distributions(path=[str(root)]):
            name = dist.metadata.get("Name") if dist.metadata is not None else None
            if not name:
                continue
            found.append((_norm_dist_name(name), str(dist.metadata.get("Version") or ""),
                          str(getattr(dist, "_path", "")), dist))
        found.sort(key=lambda f: f[:3])
        for name, _, _, dist in found:
            if name in names:
                continue
            names.add(name)
            out.distributions.append((name, dist))
            files = dist.files
            if files is None:
                log.debug("%s: no RECORD; using its METADATA only", name)
                continue
            for f in sorted(str(f).replace("\\", "/") for f in files):
                rel = PurePosixPath(f)
                if rel.is_absolute() or ".." in rel.parts or f in taken:
                    continue
                suffix = rel.suffix.lower()
                if suffix != ".py" and suffix not in DOC_SUFFIXES:
                    continue
                if any(d in SITE_SKIP_DIRS or d.startswith(".") or d.endswith((".dist-info", ".egg-info"))
                       for d in rel.parts[:-1]):
                    continue
                if suffix == ".py":
                    if _TEST_FILE_RE.match(rel.name):
                        continue
                    parts = list(rel.with_suffix("").parts)
                    if parts[-1] == "__init__":
                        parts.pop()
                    if not parts or not all(p.isidentifier() for p in parts):
                        continue
                    out.modules.append((".".join(parts), f, root / rel, name))
                elif not _NON_DOC_RE.match(rel.stem.lower()):
                    out.docs.append((f, root / rel, name))
                else:
                    continue
                taken.add(f)
    return out


def _prose(text: str) -> str | None:
    """``text`` with normalized newlines, stripped, plus a final newline; None unless mostly letters."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").strip()
    if not text or "\x00" in text:
        return None
    nonspace = len(text) - len(re.findall(r"\s", text))
    letters = sum(c.isalpha() for c in text)
    if letters < MIN_LETTER_FRACTION * nonspace:
        return None
    return text + "\n"


def doc_file_text(path: str | Path) -> str | None:
    """The text of a shipped documentation file, or None if missing, over 1 MB, not UTF-8 or not prose."""
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size > MAX_DOC_FILE_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return _prose(text)


def long_description(metadata_text: str | None) -> str | None:
    """The long description of a METADATA / PKG-INFO file: its body, else its Description header."""
    if not metadata_text:
        return None
    msg = email.parser.Parser().parsestr(metadata_text)
    body = msg.get_payload()
    desc = body if isinstance(body, str) and body.strip() else None
    if desc is None:
        value = msg.get("Description")
        if not isinstance(value, str):
            return None
        lines = value.split("\n")
        if len(lines) > 1 and all(not ln.strip() or ln.startswith("       |") for ln in lines[1:]):
            desc = "\n".join([lines[0]] + [ln[8:] for ln in lines[1:]])  # "       |" continuation
        else:
            desc = textwrap.dedent(" " * 8 + value)  # RFC 822 continuation lines
    if desc.strip() == "UNKNOWN":
        return None
    return _prose(desc)


def _metadata_text(dist: object) -> str | None:
    for name in ("METADATA", "PKG-INFO"):
        try:
            text = dist.read_text(name)  # type: ignore[attr-defined]
        except (OSError, UnicodeDecodeError):
            text = None
        if text:
            return text
    return None


class Deduper:
    """First-wins deduplication of documents and docstrings by whitespace-normalized text.

    :func:`iter_demo_documents` records what a yielded document contains when the consumer
    asks for the next one; a consumer that does not keep a document calls :meth:`reject`
    before that, and its contents stay available to later documents.
    """

    def __init__(self) -> None:
        self.documents: set[bytes] = set()
        self.docstrings: set[bytes] = set()
        self.stats = DedupStats()
        self._pending: tuple[bytes | None, list[bytes], int, int] | None = None

    @staticmethod
    def key(text: str) -> bytes:
        return hashlib.blake2b(" ".join(text.split()).encode("utf-8"), digest_size=16).digest()

    def begin(self) -> None:
        self._pending = None

    def new_sections(self, sections: list[tuple[str | None, str]]) -> list[tuple[str | None, str]]:
        """The sections whose docstring is new; the rest are counted when the document is kept."""
        keep, keys, dropped, dropped_bytes = [], [], 0, 0
        local: set[bytes] = set()
        for heading, doc in sections:
            k = self.key(doc)
            if k in self.docstrings or k in local:
                dropped += 1
                dropped_bytes += len(doc.encode("utf-8"))
                continue
            local.add(k)
            keys.append(k)
            keep.append((heading, doc))
        if not keep:  # the whole module goes: count it now
            self.stats.docstrings += dropped
            self.stats.docstring_bytes += dropped_bytes
            self.stats.emptied += 1
            self._pending = None
        else:
            self._pending = (None, keys, dropped, dropped_bytes)
        return keep

    def is_duplicate(self, text: str) -> bool:
        k = self.key(text)
        if k in self.documents:
            self.stats.documents += 1
            self.stats.document_bytes += len(text.encode("utf-8"))
            self._pending = None
            return True
        _, keys, dropped, dropped_bytes = self._pending or (None, [], 0, 0)
        self._pending = (k, keys, dropped, dropped_bytes)
        return False

    def commit(self) -> None:
        if self._pending is None:
            return
        k, keys, dropped, dropped_bytes = self._pending
        if k is not None:
            self.documents.add(k)
        self.docstrings.update(keys)
        self.stats.docstrings += dropped
        self.stats.docstring_bytes += dropped_bytes
        self._pending = None

    def reject(self) -> None:
        self._pending = None


def iter_demo_documents(
    stdlib_dir: str | Path | None,
    *,
    site: SiteSources | None = None,
    dedup: Deduper | None = None,
    max_bytes_per_dist: int | None = None,
    capped: dict[str, int] | None = None,
) -> Iterator[tuple[str, str]]:
    """Yield (text, redpajama_set_name) in a stable hash order of the document ids.

    ``stdlib_dir``: the "stdlib" source (None: without it); ``site``: the "packages" source.
    Sources are parsed lazily in that order, so a size cap only parses what it needs.
    ``max_bytes_per_dist``: once the next document of a distribution would take its text past
    this, that distribution yields nothing more (its remaining files are not even parsed);
    ``capped`` receives {distribution: bytes yielded} of the distributions so stopped.
    """
    items: list[tuple[float, str, str, str, object, str]] = []

    def add(doc_id: str, kind: str, name: str, payload: object, dist: str = "") -> None:
        items.append((unit_hash(doc_id.encode()), doc_id, kind, name, payload, dist))

    if stdlib_dir is not None:
        topics = pydoc_topics(stdlib_dir)
        for module, path in stdlib_sources(stdlib_dir):
            add(f"stdlib:{module}", "module", module, path)
        for topic in sorted(topics):
            add(f"pydoc:{topic}", "pydoc", topic, topics[topic])
    if site is not None:
        for module, rel, path, dist_name in site.modules:
            add(f"site:{rel}", "module", module, path, dist_name)
        for rel, path, dist_name in site.docs:
            add(f"sitedoc:{rel}", "doc", rel, path, dist_name)
        for name, dist in site.distributions:
            add(f"metadata:{name}", "metadata", name, dist, name)
    items.sort(key=lambda it: (it[0], it[1]))
    dist_bytes: dict[str, int] = {}
    full: dict[str, int] = {} if capped is None else capped
    for _, _doc_id, kind, name, payload, dist_name in items:
        if dist_name and dist_name in full:
            continue
        if dedup is not None:
            dedup.begin()
        if kind == "pydoc":
            text: str | None = str(payload)
            text = text if text.endswith("\n") else text + "\n"
            source = BOOK
        elif kind == "module":
            text = module_document(name, payload, dedup)  # type: ignore[arg-type]
            source = GITHUB
        elif kind == "doc":
            text = doc_file_text(payload)  # type: ignore[arg-type]
            source = BOOK
        else:
            text = long_description(_metadata_text(payload))
            source = BOOK
        if text is None or SP_META_SPACE in text:
            continue
        if dedup is not None and dedup.is_duplicate(text):
            continue
        if dist_name and max_bytes_per_dist is not None:
            if dist_bytes.get(dist_name, 0) + len(text.encode("utf-8")) > max_bytes_per_dist:
                full[dist_name] = dist_bytes.get(dist_name, 0)
                continue  # (its dedup entries are discarded by the next begin())
        if dist_name:
            dist_bytes[dist_name] = dist_bytes.get(dist_name, 0) + len(text.encode("utf-8"))
        yield text, source
        if dedup is not None:
            dedup.commit()  # the consumer asked for the next document: this one was kept


# --------------------------------------------------------------------------------------------
# Writing


def build_demo_corpus(cfg: DemoCorpusConfig) -> DemoCorpusResult:
    if cfg.max_mb is not None and not (math.isfinite(cfg.max_mb) and cfg.max_mb > 0):
        raise DataPrepError(f"--max-mb must be a finite number > 0, got {cfg.max_mb}")
    if cfg.docs_per_file < 1:
        raise DataPrepError(f"--docs-per-file must be >= 1, got {cfg.docs_per_file}")
    sources = tuple(cfg.sources)
    unknown = [x for x in sources if x not in SOURCES]
    if not sources or unknown:
        raise DataPrepError(
            f"--sources must be a comma-separated subset of {','.join(SOURCES)}, got {','.join(sources)!r}"
        )
    stdlib_dir: Path | None = None
    if "stdlib" in sources:
        stdlib_dir = Path(cfg.stdlib_dir or sysconfig.get_paths()["stdlib"])
        if not stdlib_dir.is_dir():
            raise DataPrepError(f"standard library directory {stdlib_dir} does not exist")
    site: SiteSources | None = None
    where = [str(stdlib_dir)] if stdlib_dir is not None else []
    if "packages" in sources:
        roots = tuple(Path(r) for r in cfg.site_packages) if cfg.site_packages is not None else default_site_packages()
        missing = [str(r) for r in roots if not r.is_dir()]
        if missing:
            raise DataPrepError(f"site-packages directory {', '.join(missing)} does not exist")
        site = site_sources(roots)
        where += map(str, roots)
        log.info("packages: %d distributions, %d modules, %d documentation files under %s",
                 len(site.distributions), len(site.modules), len(site.docs), ", ".join(map(str, roots)))
    use_dedup = cfg.dedup if cfg.dedup is not None else "packages" in sources
    dedup = Deduper() if use_dedup else None
    limit = None if cfg.max_mb is None else int(cfg.max_mb * MB)
    if cfg.max_mb_per_dist is not None and not (math.isfinite(cfg.max_mb_per_dist) and cfg.max_mb_per_dist > 0):
        raise DataPrepError(f"--max-mb-per-dist must be a finite number > 0, got {cfg.max_mb_per_dist}")
    dist_limit = None if cfg.max_mb_per_dist is None else int(cfg.max_mb_per_dist * MB)
    capped: dict[str, int] = {}

    # The output rule (pretrain.outputs): never the standard library or a site-packages directory (nor inside
    # or around one); an existing corpus only with --overwrite; written beside it, swapped in when complete.
    inputs = ([("standard library", stdlib_dir)] if stdlib_dir is not None else []) + [
        ("site-packages directory", Path(w)) for w in where[1 if stdlib_dir is not None else 0:]]
    output = Path(cfg.output)
    with staged_dir(output, overwrite=cfg.overwrite, owned_by=is_demo_corpus, flag="--output", inputs=inputs) as stage:
        res = _write_corpus(cfg, stage / "train", stdlib_dir, site, dedup, limit, dist_limit, capped, where)
    return dataclasses.replace(res, files=[output / f.relative_to(stage) for f in res.files])


def is_demo_corpus(path: Path) -> bool:
    """a demo corpus (train/chunkN/example_train_K.jsonl.zst files only, and top-level hidden marker files)"""
    if not path.is_dir() or path.is_symlink():
        return False
    for entry in path.iterdir():
        if entry.name.startswith(".") and entry.is_file() and not entry.is_symlink():
            continue  # e.g. launch_scripts/demo.sh's .complete
        if entry.name != "train" or not entry.is_dir() or entry.is_symlink():
            return False
        for chunk in entry.iterdir():
            if not (re.fullmatch(r"chunk\d+", chunk.name) and chunk.is_dir() and not chunk.is_symlink()):
                return False
            if not all(_FILE_RE.match(f.name) and f.is_file() and not f.is_symlink() for f in chunk.iterdir()):
                return False
    return True


def _write_corpus(cfg: DemoCorpusConfig, train_dir: Path, stdlib_dir, site, dedup, limit, dist_limit, capped,
                  where) -> DemoCorpusResult:
    import zstandard

    cctx = zstandard.ZstdCompressor(level=cfg.zstd_level)
    written: list[Path] = []
    by_source: dict[str, int] = {}
    bytes_by_source: dict[str, int] = {}
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

    docs = iter_demo_documents(stdlib_dir, site=site, dedup=dedup, max_bytes_per_dist=dist_limit, capped=capped)
    for text, source in docs:
        size = len(text.encode("utf-8"))
        if limit is not None and total_bytes + size > limit:
            if n_docs == 0:
                if dedup is not None:
                    dedup.reject()
                continue  # a cap smaller than the first document: look for a smaller one
            break
        line = json.dumps({"text": text, "meta": {"redpajama_set_name": source}}, ensure_ascii=False)
        batch.append(line.encode("utf-8") + b"\n")
        total_bytes += size
        n_docs += 1
        by_source[source] = by_source.get(source, 0) + 1
        bytes_by_source[source] = bytes_by_source.get(source, 0) + size
        if len(batch) >= cfg.docs_per_file:
            flush()
    if batch:
        flush()
    if n_docs == 0:
        raise DataPrepError(f"no documents found under {', '.join(where)} (within --max-mb {cfg.max_mb})")
    return DemoCorpusResult(
        n_docs, total_bytes, written, dict(sorted(by_source.items())), dict(sorted(bytes_by_source.items())),
        dedup.stats if dedup is not None else None, len(site.distributions) if site is not None else 0,
        dict(sorted(capped.items())),
    )
