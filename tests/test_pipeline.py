"""Grain pipeline: batch contract, packing masks, determinism, resume, host sharding, workers,
bad-record budget. Byte tokenizer, 56 px images (preset ``tiny``)."""

import dataclasses
import json
import logging
import subprocess
import sys
import textwrap
from collections import Counter

import numpy as np
import pytest
from array_record.python import array_record_module

from bird_jax.chatml import encode_chat
from bird_jax.config import get_preset
from bird_jax.data.image import load_pixels
from bird_jax.data.image import png_bytes
from bird_jax.data.packing import attention_mask
from bird_jax.data.pipeline import DataConfig, DataError, make_dataset
from bird_jax.data.records import Turn, encode_record
from bird_jax.data.shards import write_shards
from bird_jax.tokenizer import load_tokenizer
from bird_jax_testing.records import synthetic_pixels, synthetic_record

MODEL = get_preset("tiny")
TOK = load_tokenizer(MODEL)
N_RECORDS = 24
MAX_LEN = 400


def _records():
  return [synthetic_record(i, n_turns=1 + i % 3) for i in range(N_RECORDS)]


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
  out = tmp_path_factory.mktemp("shards")
  write_shards(_records(), out, num_shards=3, progress=False)
  return str(out)


@pytest.fixture(scope="session")
def by_tokens():
  """tuple(token ids) of each record's encoded chat -> (record, encoded chat)."""
  out = {}
  for r in _records():
    enc = encode_chat(TOK, [{"from": t.role, "value": t.value} for t in r.conversations],
                      n_image_tokens=MODEL.vision.n_queries, max_len=MAX_LEN)
    out[tuple(enc.ids.tolist())] = (r, enc)
  assert len(out) == N_RECORDS
  return out


def _cfg(shards, **kw):
  base = dict(shards=shards, batch_size=2, max_len=MAX_LEN, max_images_per_row=2, seed=3)
  return DataConfig(**{**base, **kw})


def _batches(cfg, n=None, state=None, **kw):
  it = iter(make_dataset(cfg, MODEL, process_index=0, process_count=1, **kw))
  if state is not None:
    it.set_state(state)
  out = []
  for b in it:
    out.append(b)
    if n is not None and len(out) == n:
      break
  stats = it.stats
  it.close()
  return out, stats


def _segments(batch):
  """(row, segment id, token slice) of every packed sample."""
  for r, seg in enumerate(batch["segment_ids"]):
    for s in range(1, seg.max() + 1):
      idx = np.nonzero(seg == s)[0]
      yield r, s, slice(idx[0], idx[-1] + 1)


def _ids(batches, by_tokens):
  return [by_tokens[tuple(b["tokens"][r, sl].tolist())][0].id
          for b in batches for r, _, sl in _segments(b)]


def _assert_equal_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batch_contract_and_segments_mode(shards, by_tokens):
  batches, stats = _batches(_cfg(shards))
  pad = TOK.pad_id
  img, size = TOK.img_id, MODEL.vision.image_size
  for b in batches:
    assert {k: (v.dtype, v.shape) for k, v in b.items()} == {
        "tokens": (np.int32, (2, MAX_LEN)), "labels": (np.int32, (2, MAX_LEN)),
        "positions": (np.int32, (2, MAX_LEN)), "segment_ids": (np.int32, (2, MAX_LEN)),
        "images": (np.uint8, (2, 2, size, size, 3)), "num_images": (np.int32, (2,))}
    padding = b["segment_ids"] == 0
    assert (b["tokens"][padding] == pad).all() and (b["labels"][padding] == -100).all()
    for r in range(2):  # right padding: real tokens first
      n_real = int((~padding[r]).sum())
      assert not padding[r, :n_real].any()
      # k-th <img> span of the row <-> images[r, k]; unused slots are zero
      assert int(b["num_images"][r]) == int((b["tokens"][r] == img).sum())
      assert (b["images"][r, b["num_images"][r]:] == 0).all()
    k_of_row = Counter()
    for r, s, sl in _segments(b):
      rec, enc = by_tokens[tuple(b["tokens"][r, sl].tolist())]
      np.testing.assert_array_equal(b["labels"][r, sl][1:], enc.labels[1:])
      assert b["labels"][r, sl][0] == -100
      np.testing.assert_array_equal(b["positions"][r, sl], np.arange(sl.stop - sl.start))
      np.testing.assert_array_equal(b["images"][r, k_of_row[r]], load_pixels(rec.image_bytes, size))
      k_of_row[r] += 1
    # no cross-segment attention: the mask from segment ids + causal
    mask = attention_mask(b["segment_ids"])
    for r in range(2):
      seg = b["segment_ids"][r]
      q, k = np.meshgrid(np.arange(MAX_LEN), np.arange(MAX_LEN), indexing="ij")
      np.testing.assert_array_equal(mask[r], (seg[q] == seg[k]) & (k <= q))
      real = seg > 0
      assert not (mask[r][np.ix_(real, real)] & (seg[:, None] != seg[None, :])[np.ix_(real, real)]).any()
  assert stats["samples"] == N_RECORDS and stats["bad_records"] == 0
  assert stats["batches"] == len(batches)
  assert max(b["segment_ids"].max() for b in batches) >= 2  # packing did pack
  assert sorted(_ids(batches, by_tokens)) == sorted(r.id for r in _records())


def test_bird_and_none_modes(shards, by_tokens):
  bird, _ = _batches(_cfg(shards, packing="bird"))
  seg_mode, _ = _batches(_cfg(shards))
  for b, s in zip(bird, seg_mode):  # same samples in the same rows; only masks/positions differ
    np.testing.assert_array_equal(b["tokens"], s["tokens"])
    np.testing.assert_array_equal(b["labels"], s["labels"])
    np.testing.assert_array_equal(b["images"], s["images"])
    np.testing.assert_array_equal(b["segment_ids"], (s["segment_ids"] > 0).astype(np.int32))
    np.testing.assert_array_equal(b["positions"], np.broadcast_to(np.arange(MAX_LEN), (2, MAX_LEN)))
    mask = attention_mask(b["segment_ids"])
    real = b["segment_ids"][0] > 0
    causal = np.tril(np.ones((MAX_LEN, MAX_LEN), bool))
    np.testing.assert_array_equal(mask[0][np.ix_(real, real)], causal[np.ix_(real, real)])
  assert len(bird) == len(seg_mode)
  none, _ = _batches(_cfg(shards, packing="none"))
  assert all(b["segment_ids"].max(axis=1).max() <= 1 for b in none)
  assert len(none) == N_RECORDS // 2
  assert _ids(none, by_tokens) == _ids(seg_mode, by_tokens)  # same sample order


def test_determinism_seeds_and_epochs(shards, by_tokens):
  a, _ = _batches(_cfg(shards, num_epochs=2))
  b, _ = _batches(_cfg(shards, num_epochs=2))
  _assert_equal_batches(a, b)
  ids = _ids(a, by_tokens)
  assert Counter(ids) == Counter({r.id: 2 for r in _records()})
  first, second = ids[:N_RECORDS], ids[N_RECORDS:]
  assert sorted(first) == sorted(second) and first != second  # reshuffled every epoch
  other, _ = _batches(_cfg(shards, seed=4))
  assert _ids(other, by_tokens) != first
  plain, _ = _batches(_cfg(shards, shuffle=False, packing="none"))
  assert [i.split("_")[1] for i in _ids(plain, by_tokens)][:4] == ["000000", "000003", "000006",
                                                                   "000009"]  # shard 0 first


def test_resume_yields_the_same_batches(shards):
  cfg = _cfg(shards, num_epochs=2)
  full, _ = _batches(cfg)
  it = iter(make_dataset(cfg, MODEL, process_index=0, process_count=1))
  head = [next(it) for _ in range(5)]
  state = json.loads(json.dumps(it.get_state()))  # JSON-able
  stats_at = it.stats
  it.close()
  rest, stats = _batches(cfg, state=state)
  _assert_equal_batches(head + rest, full)
  assert stats_at["batches"] == 5 and stats["batches"] == len(full)
  assert stats["samples"] == 2 * N_RECORDS


def test_per_host_sharding_covers_every_record_once(shards, by_tokens):
  seen = []
  for index in range(3):
    it = iter(make_dataset(_cfg(shards, batch_size=3), MODEL, process_index=index,
                           process_count=3))
    batches = list(it)
    assert all(b["tokens"].shape == (1, MAX_LEN) for b in batches)
    seen += _ids(batches, by_tokens)
  assert sorted(seen) == sorted(r.id for r in _records())
  with pytest.raises(ValueError, match="not divisible"):
    make_dataset(_cfg(shards, batch_size=4), MODEL, process_index=0, process_count=3)


def test_streams_give_the_same_batches_for_any_process_count(shards, by_tokens):
  cfg = _cfg(shards, batch_size=4, streams=4)
  whole, _ = _batches(cfg)  # one process runs the 4 streams
  assert all(b["tokens"].shape == (4, MAX_LEN) for b in whole)
  for count in (2, 4):
    per = [list(iter(make_dataset(cfg, MODEL, process_index=i, process_count=count)))
           for i in range(count)]
    stacked = [{k: np.concatenate([p[n][k] for p in per]) for k in whole[0]}
               for n in range(min(map(len, per)))]  # every process stops at the first end
    _assert_equal_batches(stacked, whole)
    read = [_ids(p, by_tokens) for p in per]
    assert all(not set(read[i]) & set(read[j]) for i in range(count) for j in range(i))
    if count == 4:  # one stream per process: each reads its whole share
      assert sorted(sum(read, [])) == sorted(r.id for r in _records())
  it = iter(make_dataset(cfg, MODEL, process_index=0, process_count=2))
  next(it)
  state = it.get_state()
  assert sorted(state["streams"]) == ["0", "1"]
  with pytest.raises(ValueError, match=r"has 2 stream\(s\), this run reads 4: set data.streams=2"):
    it.set_state(state)
  with pytest.raises(ValueError, match="data.streams=4 is not divisible by the 3 processes"):
    make_dataset(cfg, MODEL, process_index=0, process_count=3)


@pytest.mark.heavy
def test_workers_give_the_same_batches_and_resume(shards):
  cfg = _cfg(shards, num_epochs=2)
  ref, _ = _batches(cfg)
  wcfg = dataclasses.replace(cfg, worker_count=2)
  par, _ = _batches(wcfg)
  _assert_equal_batches(par, ref)
  it = iter(make_dataset(wcfg, MODEL, process_index=0, process_count=1))
  head = [next(it) for _ in range(4)]
  state = json.loads(json.dumps(it.get_state()))
  it.close()
  rest, _ = _batches(wcfg, state=state)
  _assert_equal_batches(head + rest, ref)


@pytest.mark.heavy
def test_workers_from_a_plain_script(shards, tmp_path):
  script = tmp_path / "load.py"
  script.write_text(textwrap.dedent(f"""
      from bird_jax.config import get_preset
      from bird_jax.data.pipeline import DataConfig, make_dataset

      if __name__ == "__main__":
        cfg = DataConfig(shards={shards!r}, batch_size=2, max_len={MAX_LEN}, worker_count=2)
        it = iter(make_dataset(cfg, get_preset("tiny"), process_index=0, process_count=1))
        n = sum(int(b["num_images"].sum()) for b in it)
        print("IMAGES", n, it.stats["samples"])
        it.close()
  """))
  out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert f"IMAGES {N_RECORDS} {N_RECORDS}" in out.stdout


@pytest.fixture(scope="session")
def bad_shards(tmp_path_factory):
  out = tmp_path_factory.mktemp("bad")
  good = [synthetic_record(i, n_turns=1) for i in range(6)]
  bad = [
      good[0].replace(id="ct_corrupt", image_bytes=good[0].image_bytes[:100]),
      good[1].replace(id="mr_missing", image_bytes=None),  # path-referenced, file absent
      good[2].replace(id="x_badbox", conversations=(
          good[2].conversations[0],
          Turn("assistant", "<box>(500,10),(100,20)</box>"))),
      good[3].replace(id="pet_toolong", conversations=(
          Turn("user", good[3].conversations[0].value + " Explain in detail." * 30),
          good[3].conversations[1])),
      synthetic_record(51, n_turns=3).replace(id="endoscopy_truncated"),
  ]
  writer = array_record_module.ArrayRecordWriter(str(out / "mixed.array_record"), "group_size:1")
  for rec in good[3:] + bad:
    writer.write(encode_record(rec))  # written without validation
  writer.close()
  root = tmp_path_factory.mktemp("root")
  (root / "other.png").write_bytes(png_bytes(synthetic_pixels(0, 8)))
  return str(out), str(root)


def test_bad_records_are_skipped_within_budget(bad_shards, caplog):
  path, root = bad_shards
  cfg = _cfg(path, max_len=300, image_root=root, shuffle=False, max_bad_records=4)
  with caplog.at_level(logging.WARNING, logger="bird_jax.data.pipeline"):
    batches, stats = _batches(cfg)
  assert stats["samples"] == 4 and stats["bad_records"] == 4
  assert {k: stats[f"bad_{k}"] for k in ("invalid_record", "missing_image", "corrupt_image",
                                          "too_long")} == {"invalid_record": 1, "missing_image": 1,
                                                           "corrupt_image": 1, "too_long": 1}
  assert stats["dropped_turns"] == 1  # endoscopy_truncated lost its last exchange
  text = caplog.text
  for rid in ("ct_corrupt", "mr_missing", "x_badbox", "pet_toolong"):
    assert f"record '{rid}'" in text
  assert "mixed.array_record[" in text
  with pytest.raises(DataError, match="4 bad records exceed max_bad_records=3"):
    _batches(dataclasses.replace(cfg, max_bad_records=3))


def test_a_bad_record_counts_once_over_many_epochs(bad_shards):
  path, root = bad_shards
  cfg = _cfg(path, max_len=300, image_root=root, shuffle=False, max_bad_records=4, num_epochs=3)
  _, stats = _batches(cfg)
  assert stats["samples"] == 12 and stats["bad_records"] == 4 and stats["bad_repeats"] == 8
