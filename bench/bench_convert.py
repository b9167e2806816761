"""Peak memory of checkpoint conversion, both directions, at two depths.

Builds a synthetic HF Qwen-VL checkpoint in the real layout (real tensor names, full-size
widths: LLM 4096/11008, ViT 1664/8192, resampler 4096; fewer layers and a smaller vocab so it
is a few GB), converts it hf-to-jax and jax-to-hf under `/usr/bin/time -v`, checks the result
is bitwise identical, then repeats with twice the layers. Prints one figure per line: peak RSS,
peak RSS / largest tensor, peak RSS / checkpoint size, and the bound 1.5 GB + 3 x largest
tensor ("largest tensor": the largest single tensor in bytes on either side of the conversion).

    python bench/bench_convert.py                               # ~2.4 GB and ~4.1 GB
    python bench/bench_convert.py --llm-layers 1 --vit-layers 2 --vocab 8192   # quick
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
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
  args = p.parse_args()
  work = Path(args.workdir)
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
