"""The study corpus, the same on every machine: built from a pinned list of distributions, and fingerprinted.

``launch_scripts/prep_study_data.sh`` used to read every distribution installed, so two machines built different
corpora (25.50M training tokens here, 31.28M on a fresh clone). It now reads the standard library (of the
interpreter: its version is recorded) and only the distributions pinned in ``constraints.txt``, each at its pinned
version, through a staged site-packages directory that holds only them (symlinks; nothing is copied):

    python -m experiments.corpus stage --constraints constraints.txt --out data/study/pinned-site [--allow-mismatch]
    python -m experiments.corpus fingerprint data/study/tokens [--write data/study/corpus.json]

``stage`` refuses (exit 2, writing nothing) when a pinned distribution is missing or installed at another version,
unless ``--allow-mismatch`` (then it warns and the corpus differs from the pinned one). ``fingerprint`` prints the
corpus's sha256 (of the tokenizer's sha256, the token, sample and document counts of each split and the sha1 of every
raw shard, so it does not depend on paths, compression or worker counts) and its token counts. Every study report
prints them and says when they differ from the committed results' corpus (``experiments/results/corpus.json``).
Importing this module imports neither torch nor the data pipeline.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parent.parent
COMMITTED = REPO / "experiments" / "results" / "corpus.json"  # the fingerprint of the committed results' corpus
_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([A-Za-z0-9][A-Za-z0-9._+!-]*)\s*$")


class CorpusError(ValueError):
    """A pinned list, an environment or a token directory that cannot give the pinned corpus."""


def norm(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): lower case, runs of -_. as one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    """``name==version`` per line of a constraints file (comments and blank lines skipped) -> {normalized: version}.
    Any other line, or a name pinned twice, is an error naming the file and line."""
    pins: dict[str, str] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CorpusError(f"{path}: cannot read the pinned list: {e}") from None
    for i, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        m = _PIN.match(text)
        if not m:
            raise CorpusError(f"{path}:{i}: {line.strip()!r}: expected NAME==VERSION (an exact pin)")
        name = norm(m.group(1))
        if name in pins:
            raise CorpusError(f"{path}:{i}: {m.group(1)} is pinned twice")
        pins[name] = m.group(2)
    if not pins:
        raise CorpusError(f"{path}: no NAME==VERSION pins")
    return pins


@dataclass
class Installed:
    name: str  # normalized
    version: str
    root: Path  # the site-packages directory it is installed in
    dist_info: Path  # its .dist-info (or .egg-info) directory
    top_level: list[str] = field(default_factory=list)  # first path parts its RECORD lists under root


def installed(roots: Sequence[Path]) -> dict[str, Installed]:
    """The distributions in ``roots`` (the first root wins for a name found twice), with what their RECORD holds."""
    from importlib.metadata import distributions

    out: dict[str, Installed] = {}
    for root in map(Path, roots):
        for dist in distributions(path=[str(root)]):
            name = dist.metadata.get("Name") if dist.metadata is not None else None
            if not name or norm(name) in out:
                continue
            info = Path(str(getattr(dist, "_path", "")))
            tops: list[str] = []
            for f in dist.files or []:
                parts = PurePosixPath(str(f).replace("\\", "/")).parts
                if parts and not PurePosixPath(str(f)).is_absolute() and ".." not in parts and parts[0] not in tops:
                    tops.append(parts[0])
            if info.name not in tops:
                tops.append(info.name)
            out[norm(name)] = Installed(norm(name), str(dist.version), root, info, tops)
    return out


@dataclass
class Selection:
    selected: list[Installed]
    missing: list[str]  # pinned, not installed
    mismatched: list[tuple[str, str, str]]  # (name, pinned, installed)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.mismatched

    def problems(self) -> list[str]:
        return ([f"{n}=={v} is pinned but not installed" for n, v in self.missing_pins()]
                + [f"{n} is pinned at {p} but {i} is installed" for n, p, i in self.mismatched])

    def missing_pins(self) -> list[tuple[str, str]]:
        return [(n, self._pins[n]) for n in self.missing]

    _pins: Mapping[str, str] = field(default_factory=dict, repr=False)


def select(pins: Mapping[str, str], found: Mapping[str, Installed]) -> Selection:
    """The pinned distributions that are installed at their pinned version; the missing and mismatched ones apart.
    A mismatched distribution is still selected (the caller refuses unless told to go on)."""
    sel = Selection([], [], [], dict(pins))
    for name in sorted(pins):
        dist = found.get(name)
        if dist is None:
            sel.missing.append(name)
            continue
        if dist.version != pins[name]:
            sel.mismatched.append((name, pins[name], dist.version))
        sel.selected.append(dist)
    return sel


def is_stage(path: Path) -> bool:
    """a staged site-packages directory (only symlinks)"""
    return path.is_dir() and all(p.is_symlink() for p in path.iterdir())


def stage(selection: Selection, out: Path) -> Path:
    """A site-packages directory at ``out`` holding only the selected distributions: symlinks to their dist-info and
    to every top-level entry their RECORD lists. The output rule (:mod:`pretrain.outputs`): ``out`` may not be,
    contain or lie inside a site-packages directory it links to; an existing ``out`` is replaced (atomically) only
    when it is an earlier stage (nothing but symlinks)."""
    from pretrain.outputs import check_disjoint, staged_dir

    out = Path(out)
    roots = sorted({d.root for d in selection.selected})
    check_disjoint(out, {f"site-packages directory {r}": r for r in roots}, "--out")
    with staged_dir(out, overwrite=True, owned_by=is_stage, flag="--out") as tmp:
        for dist in selection.selected:
            for top in dist.top_level:
                src = dist.root / top
                if src.exists() and not (tmp / top).exists():
                    (tmp / top).symlink_to(src.resolve())
    return out


# -- fingerprint -------------------------------------------------------------------------------------

def fingerprint(tokens_dir: Path) -> dict:
    """``{"sha256", "train_tokens", "val_tokens", "vocab_size", "seq_len"}`` of a tokenized corpus: the sha256 of its
    tokenizer's sha256, each split's token, sample and document counts and the sorted sha1s of its raw shards (from
    each split's MDS index.json; the manifest alone when an index holds no hashes). A clear error when ``tokens_dir``
    has no manifest."""
    tokens_dir = Path(tokens_dir)
    try:
        manifest = json.loads((tokens_dir / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise CorpusError(f"{tokens_dir / 'manifest.json'}: not a tokenized corpus ({e})") from None
    blob: dict = {"tokenizer": (manifest.get("tokenizer") or {}).get("sha256"), "seq_len": manifest.get("seq_len"),
                  "vocab_size": manifest.get("vocab_size"), "splits": {}}
    for split, info in sorted((manifest.get("splits") or {}).items()):
        shards: list[str] = []
        index = tokens_dir / split / "index.json"
        if index.is_file():
            try:
                for sh in json.loads(index.read_text()).get("shards", []):
                    sha = ((sh.get("raw_data") or {}).get("hashes") or {}).get("sha1")
                    if sha:
                        shards.append(sha)
            except ValueError as e:
                raise CorpusError(f"{index}: unreadable MDS index ({e})") from None
        blob["splits"][split] = {k: info.get(k) for k in ("tokens", "samples", "documents")} | {"shards": sorted(shards)}
    sha = hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()
    splits = manifest.get("splits") or {}
    return {"sha256": sha, "train_tokens": (splits.get("train") or {}).get("tokens"),
            "val_tokens": (splits.get("val") or {}).get("tokens"), "vocab_size": manifest.get("vocab_size"),
            "seq_len": manifest.get("seq_len")}


def corpus_line(tokens_dir: Path, committed: Path = COMMITTED) -> str:
    """The report's line: this corpus's sha256 and token counts, and whether it is the committed results' corpus."""
    try:
        fp = fingerprint(tokens_dir)
    except CorpusError as e:
        return f"Corpus: no fingerprint ({e})."
    line = (f"Corpus `{tokens_dir}`: sha256 {fp['sha256'][:16]}, {fp['train_tokens']:,} training and "
            f"{fp['val_tokens']:,} validation tokens (vocab {fp['vocab_size']}, seq_len {fp['seq_len']}).")
    try:
        ref = json.loads(Path(committed).read_text())
    except (OSError, ValueError):
        return line + f" No committed corpus fingerprint ({committed}) to compare with."
    if ref.get("sha256") == fp["sha256"]:
        return line + " The same corpus as the committed results'."
    theirs = (f"sha256 {ref['sha256'][:16]}" if isinstance(ref.get("sha256"), str) else "no sha256 recorded")
    tokens = ref.get("train_tokens")
    theirs += f", {tokens:,} training tokens" if isinstance(tokens, int) else (f"; {ref['note']}" if ref.get("note") else "")
    return line + (f" **It differs from the committed results' corpus** ({theirs}): their numbers are not "
                   "comparable with these.")


# -- command line ------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.corpus", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stage", help="a site-packages directory with only the pinned distributions (symlinks)")
    s.add_argument("--constraints", type=Path, default=REPO / "constraints.txt")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--site-packages", type=Path, action="append", default=None,
                   help="where the distributions are installed (repeatable; default: this interpreter's)")
    s.add_argument("--allow-mismatch", action="store_true",
                   help="go on (with a warning) when a pinned distribution is missing or at another version")
    f = sub.add_parser("fingerprint", help="the corpus's sha256 and token counts")
    f.add_argument("tokens", type=Path)
    f.add_argument("--write", type=Path, default=None, help="also write them (and the environment) as JSON here")
    f.add_argument("--pins", type=Path, default=None, help="record this pinned list in --write")
    args = p.parse_args(argv)
    try:
        if args.cmd == "stage":
            from data_prep.corpus import default_site_packages

            roots = tuple(args.site_packages) if args.site_packages else default_site_packages()
            pins = read_pins(args.constraints)
            sel = select(pins, installed(roots))
            for problem in sel.problems():
                print(f"{'warning' if args.allow_mismatch else 'error'}: {problem} ({args.constraints})", file=sys.stderr)
            if not sel.ok and not args.allow_mismatch:
                print("error: the study corpus is built from the pinned distributions at their pinned versions; "
                      "install them (pip install -c constraints.txt ...) or pass --allow-mismatch (the corpus, and "
                      "every report's corpus line, will then differ from the committed one)", file=sys.stderr)
                return 2
            stage(sel, args.out)
            print(f"staged {len(sel.selected)} pinned distributions in {args.out}: "
                  + ", ".join(f"{d.name}=={d.version}" for d in sel.selected))
            return 0
        fp = fingerprint(args.tokens)
        print(f"corpus sha256 {fp['sha256']}")
        print(f"  {fp['train_tokens']:,} training tokens, {fp['val_tokens']:,} validation tokens "
              f"(vocab {fp['vocab_size']}, seq_len {fp['seq_len']})")
        if args.write is not None:
            from pretrain.outputs import check_disjoint

            check_disjoint(args.write, {"token directory": args.tokens}, "--write")
            env = {"python": sys.version.split()[0]}
            if args.pins is not None:
                env["pins"] = read_pins(args.pins)
            from data_prep.fsutil import atomic_write_bytes

            args.write.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(args.write, (json.dumps({**fp, **env}, indent=1, sort_keys=True) + "\n").encode())
            print(f"wrote {args.write}")
        return 0
    except (CorpusError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
