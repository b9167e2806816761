"""Peak memory of checkpoint conversion, both directions, at two depths.

Builds a synthetic HF Qwen-VL checkpoint in the real layout (real tensor names, full-size
widths: LLM 4096/11008, ViT 1664/8192, resampler 4096; fewer layers and a smaller vocab so it
is a few GB), converts it hf-to-jax and jax-to-hf under `/usr/bin/time -v`, checks the result
is bitwise identical, then repeats with twice the layers. Prints one figure per line: peak RSS,
peak RSS / largest tensor, peak RSS / checkpoint size, and the bound 1.5 GB + 3 x largest
tensor ("largest tensor": the largest single tensor in bytes on either side of the conversion).

    python bench/bench_convert.py                               # ~2.4 GB and ~4.1 GB
    python bench/bench_convert.py --llm-layers 1 --vit-layers 2 --vocab 8192   # quick
    python bench/bench_convert.py --full --workdir /big/disk   # the full-size model, 19.3 GB

`--full` converts a checkpoint with the release's exact names and shapes (853 tensors, 9.66 B
parameters, vocab 151936, bf16, 2 GB shards) both ways and checks the round trip by per-tensor
SHA-1 (computed while the source is written and while the result is read back, one tensor at a
time). It needs 2 x 19.3 GB of disk: the source is deleted once converted, the Orbax copy once
converted back. The disk's own write speed is measured in the same run for the ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import ml_dtypes
import numpy as np

from bird_jax.checkpoint import safetensors_io as st
from bird_jax.config import QwenVLConfig, get_preset

GB = 1e9
BASE_BYTES = 1.5 * GB


def bench_config(llm_layers: int, vit_layers: int, vocab: int) -> QwenVLConfig:
  full = get_preset("qwen_vl_7b")
  return full.replace(llm=dataclasses.replace(full.llm, layers=llm_layers, vocab_size=vocab),
                      vision=dataclasses.replace(full.vision, layers=vit_layers),
                      image_start_id=vocab - 3, tokenizer="byte")


def hf_specs(cfg: QwenVLConfig, dtype: np.dtype) -> list[st.TensorSpec]:
  from flax import nnx

  from bird_jax.checkpoint import hf
  from bird_jax.model import abstract_model

  entries = hf.expected_tensors(cfg, hf.param_shapes(nnx.state(abstract_model(cfg))))
  return [st.TensorSpec(n, e.shape, dtype) for n, e in entries.items()]


def write_synthetic(cfg: QwenVLConfig, out: Path, dtype: np.dtype, shard_size: str) -> dict:
  """Random N(0, 0.02) tensors, generated one at a time and streamed to disk."""
  specs = hf_specs(cfg, dtype)
  planned = st.plan_shards(specs, st.parse_size(shard_size))
  shards = dict(zip(st.shard_names(len(planned)), planned))
  by_name = {s.name: s for s in specs}
  rng = np.random.default_rng(0)

  def make(name: str) -> np.ndarray:
    s = by_name[name]
    return (0.02 * rng.standard_normal(s.shape, dtype=np.float32)).astype(dtype)

  index = st.write_sharded(out, shards, make)
  (out / "config.json").write_text(json.dumps(cfg.to_hf_config(), indent=2))
  return {"bytes": index["metadata"]["total_size"], "largest": max(s.nbytes for s in specs),
          "tensors": len(specs), "files": len(shards)}


def timed(cmd: list[str]) -> dict:
  """Runs cmd under /usr/bin/time -v; returns peak RSS (bytes) and wall seconds."""
  t0 = time.time()
  proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
  if proc.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
  rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
  return {"peak_rss": rss * 1024, "seconds": time.time() - t0}


def digests(directory: Path) -> dict[str, tuple[str, str]]:
  reader = st.HFReader(directory)
  out = {}
  for name, info in reader.tensors.items():
    out[name] = (info.dtype, hashlib.sha1(reader.get(name).reshape(-1).view(np.uint8)).hexdigest())
  return out


def run_depth(cfg: QwenVLConfig, work: Path, args: argparse.Namespace, label: str) -> dict:
  shutil.rmtree(work, ignore_errors=True)
  hf_dir, jax_dir, back = work / "hf", work / "jax", work / "hf_back"
  src_dtype = np.dtype(ml_dtypes.bfloat16)
  info = write_synthetic(cfg, hf_dir, src_dtype, args.shard_size)
  py = [sys.executable, "-m", "bird_jax.convert"]
  fwd = timed(py + ["hf-to-jax", "--hf", str(hf_dir), "--out", str(jax_dir), "--dtype", args.dtype])
  bwd = timed(py + ["jax-to-hf", "--ckpt", str(jax_dir), "--out", str(back), "--dtype", "bf16",
                    "--shard-size", args.shard_size])
  identical = digests(hf_dir) == digests(back)
  out_itemsize = np.dtype(np.float32).itemsize if args.dtype == "fp32" else src_dtype.itemsize
  largest = info["largest"] * out_itemsize // src_dtype.itemsize
  bound = BASE_BYTES + 3 * largest
  for name, r in (("hf-to-jax", fwd), ("jax-to-hf", bwd)):
    print(f"{label} {name}: peak RSS {r['peak_rss'] / GB:.2f} GB | / largest tensor "
          f"{r['peak_rss'] / largest:.2f} | / checkpoint {r['peak_rss'] / info['bytes']:.3f} | "
          f"bound {bound / GB:.2f} GB {'OK' if r['peak_rss'] < bound else 'EXCEEDED'} | "
          f"{r['seconds']:.0f} s ({info['bytes'] / GB / r['seconds']:.2f} GB/s)")
  print(f"{label} round trip bitwise identical: {identical}")
  if not args.keep:
    shutil.rmtree(work, ignore_errors=True)
  return {"checkpoint": info, "largest": largest, "bound": bound, "hf_to_jax": fwd,
          "jax_to_hf": bwd, "identical": identical}


def disk_write_speed(directory: Path, nbytes: int = 2 * 10**9) -> float:
  """GB/s of writing `nbytes` to a file in `directory` and syncing it (the conversion's
  ceiling on this disk)."""
  path = directory / "disk_speed.tmp"
  block = np.random.default_rng(0).integers(0, 255, 64 << 20, dtype=np.uint8).tobytes()
  t0 = time.perf_counter()
  with open(path, "wb") as f:
    for _ in range(nbytes // len(block)):
      f.write(block)
    f.flush()
    os.fsync(f.fileno())
  seconds = time.perf_counter() - t0
  path.unlink()
  return nbytes // len(block) * len(block) / GB / seconds


def write_full(cfg: QwenVLConfig, out: Path) -> tuple[dict, dict[str, str]]:
  """The full-size source: every tensor a window of one pool of N(0, 0.02) bf16 values at its
  own offset (distinct bytes per tensor, no minutes of random-number generation), with the
  SHA-1 of each tensor as written."""
  dtype = np.dtype(ml_dtypes.bfloat16)
  specs = hf_specs(cfg, dtype)
  planned = st.plan_shards(specs, st.parse_size("2GB"))
  shards = dict(zip(st.shard_names(len(planned)), planned))
  by_name = {s.name: s for s in specs}
  pool = (0.02 * np.random.default_rng(0).standard_normal(1 << 25, dtype=np.float32)
          ).astype(dtype).view(np.uint16)
  hashes: dict[str, str] = {}

  def make(name: str) -> np.ndarray:
    spec = by_name[name]
    n = int(np.prod(spec.shape))
    start = (len(hashes) * 7919) % len(pool)
    x = np.resize(np.roll(pool, -start), n)
    hashes[name] = hashlib.sha1(x.view(np.uint8)).hexdigest()
    return x.view(dtype).reshape(spec.shape)

  index = st.write_sharded(out, shards, make)
  (out / "config.json").write_text(json.dumps(cfg.to_hf_config(), indent=2))
  return {"bytes": index["metadata"]["total_size"], "largest": max(s.nbytes for s in specs),
          "tensors": len(specs), "files": len(shards),
          "parameters": sum(int(np.prod(s.shape)) for s in specs)}, hashes


def run_full(work: Path, cfg: QwenVLConfig) -> int:
  """hf (written, hashed) -> jax -> hf, deleting each stage's input once converted."""
  shutil.rmtree(work, ignore_errors=True)
  work.mkdir(parents=True)
  hf_dir, jax_dir, back = work / "hf", work / "jax", work / "hf_back"
  disk = disk_write_speed(work)
  print(f"disk write speed: {disk:.2f} GB/s (2 GB, synced)", flush=True)
  t0 = time.time()
  info, source_hashes = write_full(cfg, hf_dir)
  print(f"source: {info['tensors']} tensors, {info['parameters'] / 1e9:.3f} B parameters, "
        f"{info['bytes'] / GB:.2f} GB in {info['files']} files, largest tensor "
        f"{info['largest'] / GB:.2f} GB (written and hashed in {time.time() - t0:.0f} s)",
        flush=True)
  py = [sys.executable, "-m", "bird_jax.convert"]
  fwd = timed(py + ["hf-to-jax", "--hf", str(hf_dir), "--out", str(jax_dir)])
  shutil.rmtree(hf_dir)
  bwd = timed(py + ["jax-to-hf", "--ckpt", str(jax_dir), "--out", str(back)])
  orbax_bytes = sum(f.stat().st_size for f in jax_dir.rglob("*") if f.is_file())
  shutil.rmtree(jax_dir)
  back_hashes = {n: d for n, (dtype, d) in digests(back).items() if dtype == "BF16"}
  files = len(list(back.glob("*.safetensors")))
  shutil.rmtree(back)
  bound = BASE_BYTES + 3 * info["largest"]
  ok = back_hashes == source_hashes
  result = {"date": time.strftime("%Y-%m-%d"), "checkpoint": info, "disk_gb_s": disk,
            "orbax_bytes": orbax_bytes, "bound": bound, "hf_to_jax": fwd, "jax_to_hf": bwd,
            "bitwise": ok, "files_back": files}
  for name, r in (("hf-to-jax", fwd), ("jax-to-hf", bwd)):
    rate = info["bytes"] / GB / r["seconds"]
    print(f"{name}: peak RSS {r['peak_rss'] / GB:.2f} GB (bound {bound / GB:.2f} GB "
          f"{'OK' if r['peak_rss'] < bound else 'EXCEEDED'}), {r['seconds']:.0f} s, "
          f"{rate:.3f} GB/s = {rate / disk:.3f} of the disk's write speed")
  print(f"Orbax checkpoint {orbax_bytes / GB:.2f} GB; back in {files} safetensors files; "
        f"round trip bitwise ({len(source_hashes)} per-tensor SHA-1): {ok}; disk needed: "
        f"{2 * info['bytes'] / GB:.1f} GB")
  (work.parent / f"{work.name}.json").write_text(json.dumps(result, indent=2))
  return 0 if ok and fwd["peak_rss"] < bound and bwd["peak_rss"] < bound else 1


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--llm-layers", type=int, default=3)
  p.add_argument("--vit-layers", type=int, default=6)
  p.add_argument("--vocab", type=int, default=32768)
  p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                 help="hf-to-jax storage dtype (the source is bf16)")
  p.add_argument("--shard-size", default="1GB")
  p.add_argument("--workdir", default="/tmp/bench_convert")
  p.add_argument("--keep", action="store_true", help="keep the checkpoints")
  p.add_argument("--full", action="store_true",
                 help="the full-size model in the release's layout (see above)")
  args = p.parse_args()
  work = Path(args.workdir)
  if args.full:
    return run_full(work / "full", get_preset("qwen_vl_7b"))
  base = timed([sys.executable, "-c", "import bird_jax.convert, bird_jax.model"])
  print(f"baseline (imports only): peak RSS {base['peak_rss'] / GB:.2f} GB")
  results = []
  for k in (1, 2):
    cfg = bench_config(k * args.llm_layers, k * args.vit_layers, args.vocab)
    label = f"[{k * args.llm_layers} LLM + {k * args.vit_layers} ViT layers]"
    r = run_depth(cfg, work / f"x{k}", args, label)
    c = r["checkpoint"]
    print(f"{label} checkpoint {c['bytes'] / GB:.2f} GB in {c['files']} files, {c['tensors']} "
          f"tensors, largest tensor {r['largest'] / GB:.3f} GB")
    results.append(r)
  for name in ("hf_to_jax", "jax_to_hf"):
    a, b = results[0][name]["peak_rss"], results[1][name]["peak_rss"]
    growth = results[1]["checkpoint"]["bytes"] / results[0]["checkpoint"]["bytes"]
    print(f"{name}: peak RSS at 2x layers / at 1x layers = {b / a:.2f} "
          f"(checkpoint grew {growth:.2f}x)")
  ok = all(r[n]["peak_rss"] < r["bound"] and r["identical"] for r in results
           for n in ("hf_to_jax", "jax_to_hf"))
  print(f"bound holds at both depths and round trips are bitwise: {ok}")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
