"""The Grain input pipeline: shards -> decode -> preprocess -> tokenize -> pack -> batch.

    ds = make_dataset(DataConfig(shards="data/train", batch_size=128), model_cfg)
    it = iter(ds)
    batch = next(it)            # dict of numpy arrays, see bird_jax.data.packing
    state = it.get_state()      # JSON-able; save it with the model checkpoint
    it.set_state(state)         # resume: the same batches an uninterrupted run would give

Stages, in each of this process's data streams (:mod:`bird_jax.data.streams`):
1. ``MapDataset`` over the ArrayRecord shards; the stream's records (``s :: streams`` of the
   whole set: every record in exactly one stream, hence on one host), shuffled with ``seed``
   (reshuffled every epoch), repeated ``num_epochs`` times (0 = forever).
2. one-to-one map (in ``worker_count`` processes): decode and validate the record, load
   its image (embedded, or from ``image_root``) to uint8 ``[S, S, 3]``, encode the chat with
   labels (:func:`bird_jax.chatml.encode_chat`). A bad record becomes a marker instead of
   raising, so the map stays one-to-one.
3. in the main process: skip markers (counted, a warning names each record; past
   ``max_bad_records`` the loader stops with :class:`DataError`), pack and batch
   (:class:`bird_jax.data.packing.BatchPacker`); the streams' batches are stacked.

Because workers only run the one-to-one stage and Grain interleaves their outputs in
index order, the batches do not depend on ``worker_count``; the iterator state of stage 3
records the position just before the first sample of the next batch, so restoring it
replays that batch exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from bird_jax.chatml import DEFAULT_SYSTEM, LABEL_MODES, ChatTooLong, encode_chat
from bird_jax.config import QwenVLConfig
from bird_jax.data.image import ImageDecodeError, load_pixels
from bird_jax.data.packing import PACKING_MODES, BatchPacker
from bird_jax.data.records import ImageRoot, RecordError, decode_record, image_bytes_of
from bird_jax.data.shards import check_shards, count_records
from bird_jax.data.streams import StreamsDataset, streams_of
from bird_jax.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

BAD_KINDS = ("invalid_record", "missing_image", "corrupt_image", "too_long")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Input pipeline options (the training config embeds these fields)."""

  shards: str | Sequence[str] = ""  # directory, glob, file, or a list of them
  image_root: str = ""  # folder for records whose image bytes are not embedded
  batch_size: int = 8  # global rows per step, split evenly over the streams
  max_len: int = 2048  # tokens per row
  max_images_per_row: int = 8  # image slots per row (M)
  packing: str = "segments"  # "segments" | "bird" | "none", see bird_jax.data.packing
  label_mode: str = "qwen_vl"  # "qwen_vl" | "assistant_only", see bird_jax.chatml
  system_prompt: str = DEFAULT_SYSTEM
  streams: int = 0  # independent record streams (0 = one per process); fixing it keeps
  #                  the batches the same for any process count dividing it
  seed: int = 0
  shuffle: bool = True
  num_epochs: int = 1  # 0 = repeat forever
  worker_count: int = 0  # preprocessing processes (0 = in the main process)
  worker_buffer_size: int = 4  # samples each worker prepares ahead
  read_threads: int = 1  # threads per process running the per-sample stage
  read_buffer_size: int = 16  # samples prefetched per process by those threads
  max_bad_records: int = 100  # skipped records allowed before the loader stops
  drop_remainder: bool = False  # drop the last, partly filled batch of a finite run

  def validate(self) -> "DataConfig":
    checks = [
        (self.packing in PACKING_MODES, f"packing {self.packing!r} not in {PACKING_MODES}"),
        (self.label_mode in LABEL_MODES, f"label_mode {self.label_mode!r} not in {LABEL_MODES}"),
        (self.batch_size >= 1, f"batch_size {self.batch_size} must be >= 1"),
        (self.max_len >= 1, f"max_len {self.max_len} must be >= 1"),
        (self.max_images_per_row >= 1, f"max_images_per_row {self.max_images_per_row} must be >= 1"),
        (self.num_epochs >= 0, f"num_epochs {self.num_epochs} must be >= 0 (0 = forever)"),
        (self.streams >= 0, f"streams {self.streams} must be >= 0 (0 = one per process)"),
        (self.worker_count >= 0, f"worker_count {self.worker_count} must be >= 0"),
        (self.max_bad_records >= 0, f"max_bad_records {self.max_bad_records} must be >= 0"),
        (bool(self.shards), "shards is empty"),
    ]
    for ok, msg in checks:
      if not ok:
        raise ValueError(f"invalid data config: {msg}")
    return self


class DataError(RuntimeError):
  """The input pipeline cannot continue (too many bad records)."""


# ---- stage 1: the source -----------------------------------------------------------------


class ShardSource:
  """Random access over ArrayRecord shards; item i is ``{"where": "shard[j]", "data": bytes}``."""

  def __init__(self, paths: Sequence[str]):
    self.paths = list(paths)
    self._counts = [count_records(p) for p in self.paths]
    self._starts = np.cumsum([0] + self._counts)
    self._source = grain.sources.ArrayRecordDataSource(self.paths)
    if len(self._source) != self._starts[-1]:
      raise RuntimeError(f"shard sizes disagree: {len(self._source)} != {self._starts[-1]}")

  def __len__(self) -> int:
    return int(self._starts[-1])

  def where(self, index: int) -> str:
    shard = int(np.searchsorted(self._starts, index, side="right")) - 1
    return f"{self.paths[shard]}[{index - int(self._starts[shard])}]"

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {"where": self.where(index), "data": self._source[index]}

  def __repr__(self) -> str:
    return f"ShardSource({len(self.paths)} shards, {len(self)} records)"


# ---- stage 2: one record -> one sample (or a bad-record marker) -----------------------------


class SampleMaker:
  """Decode, validate, load the image, tokenise. Picklable; the tokenizer loads lazily."""

  def __init__(self, cfg: DataConfig, model_cfg: QwenVLConfig, tokenizer_dir: str | None):
    self.cfg, self.model_cfg, self.tokenizer_dir = cfg, model_cfg, tokenizer_dir
    self.root = ImageRoot(cfg.image_root) if cfg.image_root else None
    self._tok = None

  def __getstate__(self):
    return {**self.__dict__, "_tok": None}

  @property
  def tok(self):
    if self._tok is None:
      self._tok = load_tokenizer(self.model_cfg, self.tokenizer_dir)
    return self._tok

  def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
    where = item["where"]
    try:
      rec = decode_record(item["data"], where).validate(where)
    except RecordError as e:
      return _bad("invalid_record", str(e))
    name = f"{where}: record {rec.id!r}"
    try:
      data = image_bytes_of(rec, self.root)
    except (OSError, ValueError) as e:
      return _bad("missing_image", f"{name}: {e}")
    try:
      pixels = load_pixels(data, self.model_cfg.vision.image_size, name)
    except ImageDecodeError as e:
      return _bad("corrupt_image", str(e))
    convs = [{"from": t.role, "value": t.value} for t in rec.conversations]
    try:
      enc = encode_chat(self.tok, convs, n_image_tokens=self.model_cfg.vision.n_queries,
                        label_mode=self.cfg.label_mode, max_len=self.cfg.max_len,
                        system=self.cfg.system_prompt)
    except ChatTooLong as e:
      return _bad("too_long", f"{name}: {e}")
    except ValueError as e:
      return _bad("invalid_record", f"{name}: {e}")
    return {"tokens": enc.ids, "labels": enc.labels, "images": pixels[None],
            "dropped_turns": enc.dropped_turns, "name": name}


def _bad(kind: str, message: str) -> dict[str, Any]:
  return {"bad": kind, "message": message}


# ---- stage 3: skip bad records, pack, batch ------------------------------------------------


class PackedBatchDataset(grain.IterDataset):
  """Skips bad-record markers (within budget) and packs samples into fixed-shape batches."""

  def __init__(self, parent: grain.IterDataset, *, packer_args: dict[str, Any],
               max_bad_records: int, drop_remainder: bool):
    super().__init__(parent)
    self.packer_args, self.max_bad_records = packer_args, max_bad_records
    self.drop_remainder = drop_remainder

  def __iter__(self) -> "PackedBatchIterator":
    return PackedBatchIterator(self._parent.__iter__(), self)

  def __str__(self) -> str:
    return f"PackedBatchDataset({self.packer_args})"


def _zero_stats() -> dict[str, int]:
  return {"samples": 0, "batches": 0, "tokens": 0, "dropped_turns": 0, "bad_records": 0,
          "bad_repeats": 0,
          **{f"bad_{k}": 0 for k in BAD_KINDS}}


class PackedBatchIterator(grain.DatasetIterator):
  """State: the parent's state before the first sample of the next batch, plus counters."""

  def __init__(self, parent: grain.DatasetIterator, ds: PackedBatchDataset):
    super().__init__(parent)
    self._ds = ds
    self._stats_counts = _zero_stats()
    self._pending: dict[str, Any] | None = None  # sample read but not yet packed
    self._bad_seen: list[str] = []  # each bad record counts once, however many epochs
    self._resume = self._snapshot(self._parent.get_state())
    self._done = False

  def _snapshot(self, parent_state: Any) -> dict[str, Any]:
    return {"parent": copy.deepcopy(parent_state), "stats": dict(self._stats_counts),
            "bad_seen": list(self._bad_seen)}

  @property
  def stats(self) -> dict[str, int]:
    """Counters since the start of the run (restored with the state)."""
    return dict(self._stats_counts)

  def _skip(self, item: dict[str, Any]) -> None:
    s = self._stats_counts
    if item["message"] in self._bad_seen:  # the same record again, in a later epoch
      s["bad_repeats"] += 1
      return
    self._bad_seen.append(item["message"])
    s["bad_records"] += 1
    s[f"bad_{item['bad']}"] += 1
    log.warning("skipping bad record (%d so far, budget %d): %s", s["bad_records"],
                self._ds.max_bad_records, item["message"])
    if s["bad_records"] > self._ds.max_bad_records:
      raise DataError(f"{s['bad_records']} bad records exceed max_bad_records="
                      f"{self._ds.max_bad_records}; last: {item['message']}")

  def _count(self, sample: dict[str, Any]) -> None:
    s = self._stats_counts
    s["samples"] += 1
    s["tokens"] += len(sample["tokens"])
    s["dropped_turns"] += int(sample["dropped_turns"])

  def __next__(self) -> dict[str, np.ndarray]:
    if self._done:
      raise StopIteration
    packer = BatchPacker(**self._ds.packer_args)
    if self._pending is not None:
      if not packer.add(self._pending):  # fits_alone held when it was read
        raise RuntimeError(f"{self._pending['name']} does not fit an empty batch")
      self._count(self._pending)
      self._pending = None
    while True:
      before = self._parent.get_state()
      try:
        item = next(self._parent)
      except StopIteration:
        self._done = True
        self._resume = self._snapshot(self._parent.get_state())
        break
      if "bad" in item:
        self._skip(item)
        continue
      if not packer.fits_alone(item):  # more images than slots per row
        self._skip(_bad("too_long", f"{item['name']}: {len(item['images'])} images exceed "
                                    f"max_images_per_row={packer.max_images}"))
        continue
      if packer.add(item):
        self._count(item)
        continue
      self._pending = item
      self._resume = self._snapshot(before)
      break
    if packer.n_samples == 0 or (self._done and self._ds.drop_remainder):
      raise StopIteration
    self._stats_counts["batches"] += 1
    self._resume["stats"]["batches"] = self._stats_counts["batches"]
    return packer.build()

  def get_state(self) -> dict[str, Any]:
    return copy.deepcopy(self._resume)

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(copy.deepcopy(state["parent"]))
    self._stats_counts = {**_zero_stats(), **state["stats"]}
    self._bad_seen = list(state.get("bad_seen", []))
    self._resume = copy.deepcopy(state)
    self._pending = None
    self._done = False


# ---- assembly ------------------------------------------------------------------------------


def process_info(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  """(index, count) of this host: given values, else JAX's."""
  if process_index is None or process_count is None:
    import jax
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  return process_index, process_count


def make_dataset(cfg: DataConfig, model_cfg: QwenVLConfig, *, tokenizer_dir: str | None = None,
                 process_index: int | None = None, process_count: int | None = None
                 ) -> StreamsDataset:
  """The pipeline for this process: ``iter()`` it for batches of ``batch_size / count`` rows,
  the rows of its streams (:mod:`bird_jax.data.streams`) stacked.

  ``tokenizer_dir``: an HF checkpoint folder holding ``qwen.tiktoken`` (else the packaged
  copy). ``process_index``/``process_count`` default to JAX's.
  """
  cfg.validate()
  index, count = process_info(process_index, process_count)
  total = cfg.streams or count
  ids = streams_of(total, index, count)
  if cfg.batch_size % total:
    raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {total} data streams "
                     f"(data.streams={cfg.streams}, {count} processes)")
  source = ShardSource([p for p, _ in check_shards(cfg.shards, min_records=total)])
  size = model_cfg.vision.image_size
  packer_args = dict(batch_size=cfg.batch_size // total, max_len=cfg.max_len,
                     max_images=cfg.max_images_per_row, image_shape=(size, size, 3),
                     pad_id=load_tokenizer(model_cfg, tokenizer_dir).pad_id, mode=cfg.packing)
  maker = SampleMaker(cfg, model_cfg, tokenizer_dir)
  if cfg.worker_count > 0:
    _mark_flags_parsed()

  def stream(s: int) -> PackedBatchDataset:
    ds = grain.MapDataset.source(source)[s::total]
    if cfg.shuffle:
      ds = ds.shuffle(seed=cfg.seed)
    ds = ds.repeat(cfg.num_epochs or None).map(maker)
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.read_threads,
                                                 prefetch_buffer_size=cfg.read_buffer_size))
    if cfg.worker_count > 0:
      it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=cfg.worker_count, per_worker_buffer_size=cfg.worker_buffer_size))
    return PackedBatchDataset(it_ds, packer_args=packer_args,
                              max_bad_records=cfg.max_bad_records,
                              drop_remainder=cfg.drop_remainder)

  return StreamsDataset(ids, total, stream)


def _mark_flags_parsed() -> None:
  """Grain's worker processes read absl flags; a plain script or pytest never parsed them."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
