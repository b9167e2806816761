"""Checkpoint conversion between the HF Qwen-VL release and bird_jax's Orbax checkpoints.

    python -m bird_jax.convert hf-to-jax --hf Qwen-VL-Chat --out ckpt/qwen_vl_chat [--dtype auto]
    python -m bird_jax.convert jax-to-hf --ckpt ckpt/run1 [--step N] --out hf_out \
        [--shard-size 4GB] [--dtype auto|bf16|fp32|fp16] [--assets Qwen-VL-Chat]
    python -m bird_jax.convert lora-export --ckpt runs/lora/checkpoints --out adapters
    python -m bird_jax.convert inspect DIR   # HF folder / .safetensors file / Orbax checkpoint
                                             # / training workdir

A LoRA run's checkpoint exports with its adapters folded into the kernels (jax-to-hf) or as
the adapters on their own (lora-export). Both directions stream tensor by tensor (one tensor, or one layer of a stacked parameter, in
memory at a time); the name/layout table is `bird_jax.checkpoint.hf.RULES`. The HF folder's
other files (qwen.tiktoken, generation_config.json, the model's *.py files, ...) travel inside
the Orbax checkpoint under `hf_assets/` and are written back by `jax-to-hf`. Wherever an Orbax
checkpoint is read (`--ckpt`, `inspect DIR`), a training workdir stands for its `checkpoints/`.

Each conversion writes OUT/manifest.json: the options, the environment, and the SHA-256 of
every file read (hashed in a background thread while it converts) and written (HF shards as
they are written; the Orbax step and small files after), for `python -m bird_jax.audit OUT`.

Exit codes (bird_jax/exit_codes.py): 0 done (inspect: the checkpoint is usable), 2 refused
input, named in one line (a missing or broken folder, a non-empty --out; inspect: a checkpoint
that is not usable as it is), 4 jax-to-hf found NaN/inf weights, 1 anything unexpected (with
its traceback).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import ml_dtypes
import numpy as np
from flax import nnx
from tqdm import tqdm

from bird_jax import exit_codes
from bird_jax.cli import ToolParser, run_tool
from bird_jax.checkpoint import hf
from bird_jax.checkpoint import orbax as ckpt
from bird_jax.checkpoint import safetensors_io as st
from bird_jax.checkpoint.verify import NonFiniteWeights, nonfinite_count, verify_params
from bird_jax.config import HF_CONFIG_FILE, QwenVLConfig, read_hf_config
from bird_jax.exit_codes import BadInput, refusing
from bird_jax.manifest import MANIFEST, Manifest, files_under, key_of
from bird_jax.model import lora

ASSETS_DIR = "hf_assets"
GENERATION_CONFIG_FILE = "generation_config.json"
# Qwen-VL-Chat's generation_config.json (written when the source folder had none).
QWEN_VL_CHAT_GENERATION_CONFIG = {
    "chat_format": "chatml", "do_sample": True, "eos_token_id": 151643, "max_new_tokens": 512,
    "max_window_size": 6144, "pad_token_id": 151643, "top_k": 0, "top_p": 0.3,
    "transformers_version": "4.31.0",
}
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# Qwen-VL-Chat's tokenizer_config.json (written when the assets have none): AutoTokenizer
# loads tokenization_qwen.py, one of the release's *.py files.
QWEN_VL_TOKENIZER_CONFIG = {
    "model_max_length": 8192, "tokenizer_class": "QWenTokenizer",
    "auto_map": {"AutoTokenizer": ["tokenization_qwen.QWenTokenizer", None]},
}
DTYPES = {"bf16": np.dtype(ml_dtypes.bfloat16), "fp16": np.dtype(np.float16),
          "fp32": np.dtype(np.float32)}
_WIDTH = {"BF16": 0, "F16": 0, "F32": 1}


def _release_free_memory() -> None:
  """Hands memory freed by the previous tensor back to the OS (glibc keeps freed blocks of
  the I/O threads' arenas otherwise, and peak RSS creeps up); a no-op without glibc."""
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass


def _model_shapes(cfg: QwenVLConfig) -> dict[str, tuple[int, ...]]:
  from bird_jax.model import abstract_model

  return hf.param_shapes(nnx.state(abstract_model(cfg)))


def _auto_dtype(tags: Sequence[str]) -> np.dtype:
  """One dtype for a stacked parameter: the source's when all layers agree, else float32."""
  return st.DTYPES[tags[0]] if len(set(tags)) == 1 else np.dtype(np.float32)


def _is_weight_file(path: Path) -> bool:
  name = path.name.lower()
  return (name.endswith(".safetensors") or name.endswith(st.PICKLE_SUFFIXES)
          or name in (st.INDEX_FILE, "pytorch_model.bin.index.json"))


def _is_asset(path: Path) -> bool:
  """A file of an HF folder that travels with the weights (not the weights, not a manifest)."""
  return path.is_file() and not _is_weight_file(path) and path.name != MANIFEST


def _manifest(out: Path, command: str, **options: Any) -> Manifest:
  """A conversion's manifest (written when it is done: `close`)."""
  config = {"command": command, "out": str(out.absolute()),
            **{k: str(Path(v).absolute()) if isinstance(v, Path) else v
               for k, v in options.items()}}
  return Manifest(out, "convert", config, write=False)


def checkpoint_root(path: str | Path) -> Path:
  """The Orbax checkpoint folder `path` names: a training workdir (holding `checkpoints/`)
  stands for its checkpoints, as --ckpt does for eval.py, chat and serve."""
  path = Path(path)
  if (path / "checkpoints").is_dir() and not _is_orbax_root(path):
    return path / "checkpoints"
  return path


def _check_empty_output(out: Path, what: str) -> None:
  if out.exists() and any(out.iterdir()):
    raise FileExistsError(f"{out}: already exists and is not empty; choose a new {what}")


# ---- HF -> Orbax -----------------------------------------------------------------------------

def hf_to_jax(hf_dir: str | Path, out_dir: str | Path, *, dtype: str = "auto", step: int = 0,
              compress: bool = False, progress: bool = True) -> dict[str, Any]:
  """Converts an HF Qwen-VL folder (config.json + safetensors) into an Orbax checkpoint at step
  `step` of `out_dir`. dtype: 'auto' keeps each tensor's dtype, or 'bf16'/'fp32'/'fp16';
  compress: zstd (smaller, slower to write; see `checkpoint_manager`)."""
  t0 = time.time()
  hf_dir, out_dir = Path(hf_dir), Path(out_dir)
  with refusing(ValueError, OSError):  # the source and the output, before any write
    reader = st.HFReader(hf_dir)
    directory = reader.directory
    hf_config, cfg = read_hf_config(directory)
    if dtype in ("fp32", "bf16"):  # the stored dtype is also the model config's compute dtype
      cfg = cfg.replace(dtype={"fp32": "float32", "bf16": "bfloat16"}[dtype]).validate()
    shapes = _model_shapes(cfg)
    entries = hf.expected_tensors(cfg, shapes)
    hf.check_tensors({n: (t.shape, t.dtype) for n, t in reader.tensors.items()}, entries,
                     source=str(hf_dir))
    _check_empty_output(out_dir, "--out")
    if dtype != "auto" and dtype not in DTYPES:
      raise ValueError(f"--dtype {dtype!r}: choose auto, {', '.join(DTYPES)}")

  record = _manifest(out_dir, "hf-to-jax", hf=hf_dir, dtype=dtype, step=step, compress=compress)
  record.hash_later("inputs", "hf", [p for p in sorted(directory.iterdir()) if _is_asset(p)
                                     or p.name in reader.files or p.name == st.INDEX_FILE])
  bar = tqdm(total=reader.total_bytes, unit="B", unit_scale=True, desc="hf-to-jax",
             disable=not progress)

  def get(name: str) -> np.ndarray:
    _release_free_memory()
    x = reader.get(name)
    bar.update(reader.tensors[name].nbytes)
    return x

  leaves = {}
  for path, plan in hf.param_plans(entries, shapes).items():
    dt = (_auto_dtype([reader.tensors[n].dtype for n in plan.names]) if dtype == "auto"
          else DTYPES[dtype])
    leaves[path] = ckpt.StreamedArray(plan.shape, dt, len(plan.names),
                                      lambda i, plan=plan, dt=dt: plan.block(i, get, dt))
  source = {"config": hf_config, "directory": str(directory.resolve()),
            "dtypes": {n: t.dtype for n, t in reader.tensors.items()},
            "layout": reader.layout()}
  manager = ckpt.checkpoint_manager(out_dir, compress=compress)
  ckpt.save(manager, step, params=leaves, config=cfg, hf_source=source)
  manager.wait_until_finished()
  manager.close()
  bar.close()
  copied = _copy_assets(directory, out_dir / ASSETS_DIR)
  record.hash_now("outputs", "checkpoint", files_under(out_dir / str(step)))
  record.hash_now("outputs", "assets", files_under(out_dir / ASSETS_DIR))
  record.close(outcome="done")
  return {"tensors": len(entries), "bytes": reader.total_bytes, "params": len(leaves),
          "assets": copied, "seconds": round(time.time() - t0, 2), "out": str(out_dir)}


def _copy_assets(src: Path, dst: Path) -> list[str]:
  """Every top-level non-weight file of the HF folder (tokenizer, generation config, code)."""
  files = sorted(p for p in src.iterdir() if _is_asset(p))
  if files:
    dst.mkdir(parents=True, exist_ok=True)
  for p in files:
    shutil.copy2(p, dst / p.name)
  return [p.name for p in files]


# ---- Orbax -> HF -----------------------------------------------------------------------------

def jax_to_hf(ckpt_dir: str | Path, out_dir: str | Path, *, step: int | None = None,
              shard_size: str | int | None = None, dtype: str = "auto",
              assets: str | Path | None = None, allow_non_finite: bool = False,
              progress: bool = True) -> dict[str, Any]:
  """Writes an HF Qwen-VL folder from a step of an Orbax checkpoint. shard_size None reuses
  the source checkpoint's shard layout when recorded (else 4GB shards). dtype 'auto': each
  tensor's dtype in the HF source when recorded, else the stored parameter's dtype. assets: a
  folder whose non-weight files (tokenizer, model code, generation config) are copied; default
  the checkpoint's own `hf_assets/` (written by hf-to-jax). A parameter holding NaN/inf stops
  the export (NonFiniteWeights, the output folder removed) unless `allow_non_finite`."""
  t0 = time.time()
  ckpt_dir, out_dir = checkpoint_root(ckpt_dir), Path(out_dir)
  with refusing(ValueError, OSError):  # the checkpoint and the options, before any write
    manager = ckpt.checkpoint_manager(ckpt_dir, read_only=True)
    cfg = ckpt.restore_config(manager, step)
    source = ckpt.restore_json(manager, ckpt.HF_SOURCE, step) or {}
    reader = ckpt.ParamReader(manager, step)
    shapes, read = ckpt.merged_reader(manager, reader)
    _check_params(shapes, _model_shapes(cfg), ckpt_dir)
    entries = hf.expected_tensors(cfg, shapes)
    if dtype != "auto" and dtype not in DTYPES:
      raise ValueError(f"--dtype {dtype!r}: choose auto, {', '.join(DTYPES)}")
  src_dtypes = source.get("dtypes", {})

  def dtype_for(e: hf.Entry) -> np.dtype:
    if dtype != "auto":
      return DTYPES[dtype]
    tag = src_dtypes.get(e.name)
    return st.DTYPES[tag] if tag else reader.dtypes[e.rule.path]

  specs = [st.TensorSpec(n, e.shape, dtype_for(e)) for n, e in entries.items()]
  layout = source.get("layout")
  with refusing(ValueError, OSError):
    if shard_size is None and layout:
      shards = st.layout_shards(specs, layout)
    else:
      planned = st.plan_shards(specs, st.parse_size(shard_size or "4GB"))
      shards = dict(zip(st.shard_names(len(planned)), planned))
    _check_empty_output(out_dir, "--out")

  record = _manifest(out_dir, "jax-to-hf", ckpt=ckpt_dir, step=reader.step,
                     shard_size=shard_size, dtype=dtype, assets=None if assets is None else
                     Path(assets), allow_non_finite=allow_non_finite)
  record.hash_later("inputs", "checkpoint", ckpt.step_files(ckpt_dir, reader.step))
  bar = tqdm(total=sum(s.nbytes for s in specs), unit="B", unit_scale=True, desc="jax-to-hf",
             disable=not progress)
  dtypes = {s.name: s.dtype for s in specs}

  def get(name: str) -> np.ndarray:
    _release_free_memory()
    x = hf.to_hf_tensor(entries[name], read, dtypes[name])
    bad = 0 if allow_non_finite else nonfinite_count(x)
    if bad:
      raise NonFiniteWeights(f"{ckpt_dir} step {reader.step}: {name} holds {bad:,} NaN/inf "
                             f"value(s) of {x.size:,}; not exported (--allow-non-finite exports "
                             "it anyway)")
    return x

  existed = out_dir.exists()
  hashes: dict[str, dict] = {}
  try:
    index = st.write_sharded(out_dir, shards, get, on_tensor=lambda s: bar.update(s.nbytes),
                             hashes=hashes)
  except NonFiniteWeights:
    shutil.rmtree(out_dir, ignore_errors=True)  # it was empty: nothing but this export is lost
    if existed:
      out_dir.mkdir()
    raise
  finally:
    bar.close()
  assets_dir = Path(assets) if assets else ckpt_dir / ASSETS_DIR
  _write_metadata(out_dir, assets_dir, cfg, source, set(dtypes.values()))
  record.hash_now("inputs", "assets", [p for p in sorted(assets_dir.glob("*")) if _is_asset(p)])
  record.set_group("outputs", "weights",
                   {key_of(out_dir, out_dir / f): e for f, e in hashes.items()})
  record.hash_now("outputs", "files", [p for p in sorted(out_dir.iterdir())
                                       if _is_asset(p) or p.name == st.INDEX_FILE])
  record.close(outcome="done")
  return {"tensors": len(specs), "bytes": index["metadata"]["total_size"], "files": len(shards),
          "seconds": round(time.time() - t0, 2), "out": str(out_dir)}


def lora_export(ckpt_dir: str | Path, out_dir: str | Path, *, step: int | None = None
                ) -> dict[str, Any]:
  """The adapters of a LoRA run's checkpoint on their own (bird_jax/model/lora.py
  `save_adapters`): a few MB to share, loaded onto the base with
  `load_pretrained(base, adapters=out_dir)`."""
  ckpt_dir, out_dir = checkpoint_root(ckpt_dir), Path(out_dir)
  with refusing(ValueError, OSError):  # the checkpoint and the output, before any write
    manager = ckpt.checkpoint_manager(ckpt_dir, read_only=True)
    reader = ckpt.ParamReader(manager, step)
    paths = sorted(p for p in reader.shapes if lora.is_adapter(p))
    if not paths:
      raise ValueError(f"{ckpt_dir}: step {reader.step} holds no LoRA adapters (a run with "
                       "lora.rank > 0 writes them)")
    cfg = ckpt.adapter_config(manager, reader.step)
    init = (ckpt.restore_json(manager, ckpt.RUN_CONFIG, reader.step) or {}).get("init", {})
    _check_empty_output(out_dir, "--out")
  record = _manifest(out_dir, "lora-export", ckpt=ckpt_dir, step=reader.step)
  record.hash_later("inputs", "checkpoint", ckpt.step_files(ckpt_dir, reader.step))
  adapters = {p: reader.read(p) for p in paths}
  lora.save_adapters(out_dir, adapters, cfg, {"hf": init.get("hf", ""), "ckpt": init.get("ckpt", ""),
                                              "checkpoint": str(ckpt_dir.resolve()),
                                              "step": reader.step})
  record.hash_now("outputs", "adapters", [p for p in files_under(out_dir) if p.name != MANIFEST])
  record.close(outcome="done")
  return {"adapters": len(paths), "bytes": sum(a.nbytes for a in adapters.values()),
          "rank": cfg.rank, "alpha": cfg.alpha, "out": str(out_dir)}


def _check_params(found: dict, expected: dict, where: Path) -> None:
  missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
  shapes = [f"{p}: {list(found[p])}, the model expects {list(expected[p])}"
            for p in sorted(set(found) & set(expected)) if tuple(found[p]) != tuple(expected[p])]
  if missing or extra or shapes:
    raise hf.CheckpointMismatch(f"{where}: parameters do not match its model_config: missing "
                                f"{missing}, unexpected {extra}, wrong shapes {shapes}")


def _write_metadata(out: Path, assets: Path, cfg: QwenVLConfig, source: dict,
                    dtypes: set) -> None:
  """config.json (this model's config over the source's), then the assets' other files, and
  where those are missing the default generation config, the packaged qwen.tiktoken and
  Qwen-VL-Chat's tokenizer_config.json."""
  base = source.get("config") or {}
  if not base and (assets / HF_CONFIG_FILE).exists():
    base = json.loads((assets / HF_CONFIG_FILE).read_text())
  config = {**base, **cfg.to_hf_config()}
  config["visual"] = {**base.get("visual", {}), **config["visual"]}
  floats = {np.dtype(d) for d in dtypes}
  for flag, d in (("bf16", DTYPES["bf16"]), ("fp16", DTYPES["fp16"]), ("fp32", DTYPES["fp32"])):
    config[flag] = floats == {d}
  config["torch_dtype"] = {DTYPES["bf16"]: "bfloat16", DTYPES["fp16"]: "float16"}.get(
      next(iter(floats)) if len(floats) == 1 else None, "float32")
  (out / HF_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
  if assets.is_dir():
    for p in sorted(assets.iterdir()):
      if _is_asset(p) and p.name != HF_CONFIG_FILE:
        shutil.copy2(p, out / p.name)
  if not (out / GENERATION_CONFIG_FILE).exists():
    (out / GENERATION_CONFIG_FILE).write_text(
        json.dumps(QWEN_VL_CHAT_GENERATION_CONFIG, indent=2) + "\n")
  if cfg.tokenizer == "qwen" and not (out / "qwen.tiktoken").exists():
    from bird_jax.tokenizer import packaged_qwen_vocab

    shutil.copy2(packaged_qwen_vocab(), out / "qwen.tiktoken")
  if cfg.tokenizer == "qwen" and not (out / TOKENIZER_CONFIG_FILE).exists():
    (out / TOKENIZER_CONFIG_FILE).write_text(json.dumps(QWEN_VL_TOKENIZER_CONFIG, indent=2) + "\n")


# ---- inspect ---------------------------------------------------------------------------------

def _is_orbax_root(path: Path) -> bool:
  return path.is_dir() and any(p.is_dir() and p.name.isdigit() and (p / ckpt.PARAMS).exists()
                               for p in path.iterdir())


def inspect(path: str | Path, *, step: int | None = None, verify: bool = True) -> tuple[str, bool]:
  """(a report of what a checkpoint holds and where each tensor maps, whether it is usable).
  `path`: an HF folder or .safetensors file, an Orbax checkpoint or a training workdir.
  Orbax: `verify` reads every parameter of the step back and counts NaN/inf values."""
  path = checkpoint_root(path)
  if _is_orbax_root(path):
    return _inspect_orbax(path, step, verify)
  return _inspect_hf(path)


def _mapping(name: str) -> str:
  found = hf.rule_for_name(name)
  if found is None:
    return "NOT MAPPED (no rule in the table)"
  rule, layer = found
  return f"{rule.path}{'' if layer is None else f'[{layer}]'}  ({rule.transform.name})"


def _inspect_hf(path: Path) -> tuple[str, bool]:
  with refusing(ValueError, OSError):
    reader = st.HFReader(path)
  lines = [f"HF safetensors checkpoint {reader.directory}: {len(reader.tensors)} tensors, "
           f"{reader.total_bytes / 1e9:.3f} GB in {len(reader.files)} file(s)"]
  if reader.ignored_pickles:
    lines.append(f"ignored pickle files (never loaded): {', '.join(reader.ignored_pickles)}")
  width = max((len(n) for n in reader.tensors), default=0)
  for name, t in reader.tensors.items():
    lines.append(f"  {name:<{width}}  {t.dtype:<4} {str(list(t.shape)):<18} {t.file:<32} -> "
                 f"{_mapping(name)}")
  cfg_path = reader.directory / HF_CONFIG_FILE
  if not cfg_path.exists():
    lines.append(f"no {HF_CONFIG_FILE}: cannot check the tensors against a model config")
    return "\n".join(lines), False
  try:
    _, cfg = read_hf_config(reader.directory)
  except ValueError as e:
    lines.append(f"{e}\nNOT LOADABLE as it is")
    return "\n".join(lines), False
  entries = hf.expected_tensors(cfg, _model_shapes(cfg))
  problems = hf.tensor_problems({n: (t.shape, t.dtype) for n, t in reader.tensors.items()}, entries)
  lines.append(f"model config: LLM {cfg.llm.layers} layers x {cfg.llm.hidden}, ViT "
               f"{cfg.vision.layers} layers x {cfg.vision.width}; expects {len(entries)} tensors")
  for title, items in problems.items():
    lines.append(f"{title}: {len(items)}" + "".join(f"\n    {x}" for x in items))
  ok = not any(problems.values())
  lines.append("OK: every tensor maps onto the model" if ok else "NOT LOADABLE as it is")
  return "\n".join(lines), ok


def _inspect_orbax(path: Path, step: int | None, verify: bool) -> tuple[str, bool]:
  with refusing(ValueError, OSError):
    manager = ckpt.checkpoint_manager(path, read_only=True)
    steps = manager.all_steps()
    reader = ckpt.ParamReader(manager, step)
  lines = [f"Orbax checkpoint {path}: steps {steps}; showing step {reader.step}"]
  items = sorted(p.name for p in (path / str(reader.step)).iterdir() if p.is_dir())
  lines.append(f"items: {', '.join(items)}")
  source = ckpt.restore_json(manager, ckpt.HF_SOURCE) or {}
  if source:
    lines.append(f"converted from: {source.get('directory')}")
  assets = path / ASSETS_DIR
  if assets.is_dir():
    lines.append(f"{ASSETS_DIR}/: {', '.join(sorted(p.name for p in assets.iterdir()))}")
  try:
    cfg = ckpt.restore_config(manager)
  except FileNotFoundError as e:
    cfg = None
    lines.append(str(e))
  by_path: dict[str, list[hf.Rule]] = {}
  for r in hf.RULES:
    by_path.setdefault(r.path, []).append(r)
  width = max(len(p) for p in reader.arrays)
  total = 0
  for p in sorted(reader.arrays):
    shape, dt = reader.shapes[p], reader.dtypes[p]
    total += int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    rules = by_path.get(p)
    layers = "{0.." + str(shape[0] - 1) + "}" if shape else ""
    target = ("NOT MAPPED (no rule in the table)" if not rules else
              ", ".join(f"{r.hf.replace('{i}', layers)} ({r.transform.name})" for r in rules))
    lines.append(f"  {p:<{width}}  {str(dt):<8} {str(list(shape)):<22} -> {target}")
  lines.append(f"{len(reader.arrays)} parameters, {total / 1e9:.3f} GB")
  ok = cfg is not None
  if cfg is not None:
    expected = _model_shapes(cfg)
    missing = sorted(set(expected) - set(reader.arrays))
    wrong = [p for p in expected if p in reader.arrays and tuple(expected[p]) != reader.shapes[p]]
    ok = not (missing or wrong)
    lines.append(f"model_config: missing parameters {missing}, wrong shapes {wrong}"
                 if not ok else "parameters match model_config")
  if verify:
    report = verify_params(manager, reader.step)
    ok = ok and report.ok
    lines.append(f"read back: {report.summary()}")
  else:
    lines.append("read back: not checked (--no-verify)")
  lines.append("OK" if ok else "NOT USABLE as it is")
  return "\n".join(lines), ok


# ---- CLI -------------------------------------------------------------------------------------

PROG = "python -m bird_jax.convert"


def main(argv: Sequence[str] | None = None) -> int:
  """One command; what it raises carries its exit code (bird_jax/cli.py's run_tool reports it:
  BadInput 2, NonFiniteWeights 4, anything else 1 with its traceback)."""
  parser = ToolParser(prog=PROG, description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  a = sub.add_parser("hf-to-jax", help="HF safetensors folder -> Orbax checkpoint")
  a.add_argument("--hf", required=True, help="HF Qwen-VL folder (config.json + safetensors)")
  a.add_argument("--out", required=True, help="new Orbax checkpoint directory")
  a.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32", "fp16"])
  a.add_argument("--step", type=int, default=0)
  a.add_argument("--compress", action="store_true",
                 help="zstd-compress the weights: about 22%% smaller, half the write speed")
  b = sub.add_parser("jax-to-hf", help="Orbax checkpoint -> HF safetensors folder")
  b.add_argument("--ckpt", required=True, help="Orbax checkpoint directory (or a training "
                 "workdir)")
  b.add_argument("--out", required=True, help="new HF folder")
  b.add_argument("--step", type=int, default=None, help="default: the latest step")
  b.add_argument("--shard-size", default=None,
                 help="e.g. 4GB; default: the source's shard layout when recorded, else 4GB")
  b.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32", "fp16"])
  b.add_argument("--allow-non-finite", action="store_true",
                 help="export weights holding NaN/inf (refused by default)")
  b.add_argument("--assets", default=None,
                 help="folder whose non-weight files (qwen.tiktoken, *.py, generation_config.json) "
                      "are copied, e.g. the original HF download; default: CKPT/hf_assets")
  e = sub.add_parser("lora-export", help="a LoRA run's adapters on their own (small)")
  e.add_argument("--ckpt", required=True, help="the LoRA run's Orbax checkpoint directory")
  e.add_argument("--out", required=True, help="new folder: adapters.safetensors + adapters.json")
  e.add_argument("--step", type=int, default=None, help="default: the latest step")
  c = sub.add_parser("inspect", help="list tensors/parameters and what maps where; check them")
  c.add_argument("path", help="HF folder or .safetensors file, Orbax checkpoint or training "
                 "workdir")
  c.add_argument("--step", type=int, default=None, help="Orbax: default the latest step")
  c.add_argument("--no-verify", action="store_true",
                 help="Orbax: skip reading every parameter back (NaN/inf, truncated files)")
  args = parser.parse_args(argv)
  if args.command == "hf-to-jax":
    report = hf_to_jax(args.hf, args.out, dtype=args.dtype, step=args.step,
                       compress=args.compress)
  elif args.command == "jax-to-hf":
    report = jax_to_hf(args.ckpt, args.out, step=args.step, shard_size=args.shard_size,
                       dtype=args.dtype, assets=args.assets, allow_non_finite=args.allow_non_finite)
  elif args.command == "lora-export":
    report = lora_export(args.ckpt, args.out, step=args.step)
  else:
    text, ok = inspect(args.path, step=args.step, verify=not args.no_verify)
    print(text)
    if not ok:
      raise BadInput(f"{args.path}: not usable as it is (the report above says why)")
    return exit_codes.OK
  print(json.dumps(report))
  return exit_codes.OK


if __name__ == "__main__":
  run_tool(PROG, main)
