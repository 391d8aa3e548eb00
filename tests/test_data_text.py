"""llmquant.data: offline folder resolution, WikiText-2 / C4 text, seeded calibration windows."""

from __future__ import annotations

import pytest
import torch
from llmquant.eval.tiny import byte_tokenizer

from llmquant.data import DataNotFoundError, calibration_batch, load_text, resolve_data_dir, tokenize_text


@pytest.fixture()
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_resolve_data_dir_prefers_argument_then_env(tmp_path, monkeypatch):
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv("LLMQUANT_DATA_DIR", str(tmp_path))
    assert resolve_data_dir() == tmp_path
    assert resolve_data_dir(other) == other
    monkeypatch.delenv("LLMQUANT_DATA_DIR")
    assert resolve_data_dir() is None


def test_resolve_data_dir_rejects_missing_folder(tmp_path, monkeypatch):
    with pytest.raises(DataNotFoundError, match="--data-dir"):
        resolve_data_dir(tmp_path / "nope")
    monkeypatch.setenv("LLMQUANT_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(DataNotFoundError, match="LLMQUANT_DATA_DIR"):
        resolve_data_dir()


def test_wikitext_offline_is_the_raw_file(data_dir):
    text = load_text("wikitext2", "test", data_dir)
    assert text == (data_dir / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8")
    assert text.startswith(" = Robert Boulter = \n")
    assert load_text("wikitext2", "valid", data_dir) == load_text("wikitext2", "validation", data_dir)


def test_c4_offline_joins_documents(data_dir):
    import pyarrow.parquet as pq

    docs = pq.read_table(data_dir / "c4" / "c4_validation_2k.parquet").column("text").to_pylist()
    text = load_text("c4", "test", data_dir)
    assert text == "\n\n".join(docs)
    assert load_text("c4", "validation", data_dir) == text


def test_env_variable_is_used(data_dir, monkeypatch):
    monkeypatch.setenv("LLMQUANT_DATA_DIR", str(data_dir))
    assert load_text("wikitext2", "valid").startswith((data_dir / "wikitext-2-raw" / "wiki.valid.raw").read_text()[:100])


def test_missing_data_names_both_ways(tmp_path, monkeypatch, offline):
    monkeypatch.delenv("LLMQUANT_DATA_DIR", raising=False)
    with pytest.raises(DataNotFoundError) as err:
        load_text("wikitext2", "test", tmp_path)
    msg = str(err.value)
    assert "wikitext-2-raw/wiki.test.raw" in msg
    assert "LLMQUANT_DATA_DIR" in msg and "--data-dir" in msg
    assert "go online" in msg and "HF datasets" in msg
    with pytest.raises(DataNotFoundError, match="c4_validation"):
        load_text("c4", "test", tmp_path)


def test_bad_names_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'ptb'.*wikitext2, c4"):
        load_text("ptb", "test", tmp_path)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_text("wikitext2", "dev", tmp_path)


def _write_train(tmp_path, text):
    (tmp_path / "wikitext-2-raw").mkdir()
    (tmp_path / "wikitext-2-raw" / "wiki.train.raw").write_text(text, encoding="utf-8")


def test_calibration_batch_is_seeded_windows_of_the_train_stream(tmp_path):
    text = "".join(f" line {i} of the calibration text .\n" for i in range(400))
    _write_train(tmp_path, text)
    tok = byte_tokenizer()
    stream = tokenize_text(tok, text)
    state = torch.random.get_rng_state()
    a = calibration_batch(tok, 6, 32, seed=3, data_dir=tmp_path)
    assert torch.equal(torch.random.get_rng_state(), state), "the global RNG must not be touched"
    b = calibration_batch(tok, 6, 32, seed=3, data_dir=tmp_path)
    c = calibration_batch(tok, 6, 32, seed=4, data_dir=tmp_path)
    assert a.shape == (6, 32) and a.dtype == torch.long
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    starts = []
    for row in a:
        # Each row is a contiguous slice of the tokenized train split.
        hits = [s for s in range(stream.numel() - 31) if torch.equal(stream[s : s + 32], row)]
        assert hits, "row is not a window of the train stream"
        starts.append(hits[0])
    assert len(set(starts)) > 1


def test_calibration_batch_errors(tmp_path):
    _write_train(tmp_path, "short text")
    tok = byte_tokenizer()
    with pytest.raises(ValueError, match="fewer than seq_len=64"):
        calibration_batch(tok, 2, 64, seed=0, data_dir=tmp_path)
    with pytest.raises(ValueError, match="n_samples and seq_len"):
        calibration_batch(tok, 0, 4, seed=0, data_dir=tmp_path)


def test_calibration_batch_on_real_train_split(data_dir):
    tok = byte_tokenizer()
    batch = calibration_batch(tok, 4, 128, seed=0, data_dir=data_dir)
    assert batch.shape == (4, 128)
    assert tok.decode(batch[0]) in (data_dir / "wikitext-2-raw" / "wiki.train.raw").read_text(encoding="utf-8")
