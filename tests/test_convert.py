"""HF safetensors <-> Orbax conversion on a tiny checkpoint written here in the real HF layout:
bitwise round trips (bf16 and fp32, several shards), logits parity with the independent
PyTorch reference, validation errors, the CLI and `inspect`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from conftest import image_row
from bird_jax import convert
from bird_jax import manifest as M
from bird_jax.audit import audit
from bird_jax.checkpoint import hf
from bird_jax.checkpoint import orbax as ckpt
from bird_jax.checkpoint import safetensors_io as st
from bird_jax.exit_codes import BadInput
from bird_jax.model import abstract_model, model_from_params
from bird_jax.tree_paths import flatten
from bird_jax_testing.reference import QwenVLReference
from bird_jax_testing.tools import exit_code

BF16 = np.dtype(ml_dtypes.bfloat16)
SHARD = 700_000  # bytes: the tiny bf16 checkpoint (4.1 MB) spans several files


def hf_order(cfg, weights):
  entries = hf.expected_tensors(cfg, hf.param_shapes(nnx.state(abstract_model(cfg))))
  return {n: weights[n] for n in entries}


def write_hf(directory: Path, cfg, weights, dtype, shard_size=SHARD, extra_files=True) -> dict:
  tensors = {n: w.astype(dtype) for n, w in hf_order(cfg, weights).items()}
  index = st.save_tensors(directory, tensors, shard_size=shard_size)
  (directory / "config.json").write_text(json.dumps(cfg.to_hf_config()))
  if extra_files:
    (directory / "qwen.tiktoken").write_text("IQ== 0\n")
    (directory / "modeling_qwen.py").write_text("# model code shipped with the release\n")
  return index


def tensors_of(directory: Path) -> dict[str, np.ndarray]:
  reader = st.HFReader(directory)
  return {n: reader.get(n) for n in reader.tensors}


def assert_bitwise(a: dict, b: dict) -> None:
  assert sorted(a) == sorted(b)
  for name in a:
    assert a[name].dtype == b[name].dtype, name
    assert a[name].shape == b[name].shape, name
    assert a[name].tobytes() == b[name].tobytes(), name


@pytest.fixture(scope="module", params=["bf16", "fp32"])
def converted(request, tmp_path_factory, tiny_cfg, hf_weights):
  """(source HF dir, its index, Orbax dir) for a bf16 and an fp32 source."""
  dtype = BF16 if request.param == "bf16" else np.dtype(np.float32)
  root = tmp_path_factory.mktemp(f"conv_{request.param}")
  index = write_hf(root / "hf", tiny_cfg, hf_weights, dtype)
  assert len(set(index["weight_map"].values())) >= 3
  if request.param == "bf16":  # through the CLI entry point
    assert convert.main(["hf-to-jax", "--hf", str(root / "hf"), "--out", str(root / "jax")]) == 0
  else:
    convert.hf_to_jax(root / "hf", root / "jax", progress=False)
  return root, index, request.param


def test_round_trip_is_bitwise_with_the_same_index(converted):
  root, index, kind = converted
  if kind == "bf16":
    argv = ["jax-to-hf", "--ckpt", str(root / "jax"), "--out", str(root / "back")]
    assert convert.main(argv) == 0
  else:
    convert.jax_to_hf(root / "jax", root / "back", progress=False)
  assert_bitwise(tensors_of(root / "hf"), tensors_of(root / "back"))
  back_index = json.loads((root / "back" / st.INDEX_FILE).read_text())
  assert back_index == index
  assert sorted(p.name for p in (root / "back").glob("*.safetensors")) == \
      sorted(p.name for p in (root / "hf").glob("*.safetensors"))
  # the metadata HF's loader needs, the source's extra files carried through
  for f in (root / "back").glob("*.safetensors"):
    with open(f, "rb") as fh:
      header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
    assert header["__metadata__"] == {"format": "pt"}
  assert (root / "back" / "qwen.tiktoken").read_text() == "IQ== 0\n"
  assert (root / "back" / "modeling_qwen.py").exists()
  config = json.loads((root / "back" / "config.json").read_text())
  assert config["torch_dtype"] == ("bfloat16" if kind == "bf16" else "float32")
  assert config["bf16"] == (kind == "bf16") and config["fp32"] == (kind == "fp32")
  assert {k: v for k, v in config.items() if k not in ("bf16", "fp32", "fp16", "torch_dtype")} == \
      {k: v for k, v in json.loads((root / "hf" / "config.json").read_text()).items()
       if k not in ("bf16", "fp32", "fp16")}
  generation = json.loads((root / "back" / "generation_config.json").read_text())
  assert generation == convert.QWEN_VL_CHAT_GENERATION_CONFIG
  # both directions keep a manifest of what they read and wrote; the HF shards were hashed as
  # they were written
  record = M.read(root / "back")
  assert record["config"]["command"] == "jax-to-hf" and "manifest.json" not in record["outputs"]
  assert {k: e["sha256"] for k, e in record["outputs"]["weights"].items()} == {
      p.name: M.sha256_of(p) for p in (root / "back").glob("*.safetensors")}
  assert not (root / "jax" / convert.ASSETS_DIR / M.MANIFEST).exists()
  for out in (root / "jax", root / "back"):
    found = audit(out)
    assert found.exit_code == 0, found.lines()


def test_stored_parameters_keep_the_source_dtype(converted, tiny_cfg):
  root, _, kind = converted
  reader = ckpt.ParamReader(ckpt.checkpoint_manager(root / "jax", read_only=True))
  want = BF16 if kind == "bf16" else np.dtype(np.float32)
  assert set(reader.dtypes.values()) == {want}
  assert reader.shapes == hf.param_shapes(nnx.state(abstract_model(tiny_cfg)))


def test_greedy_shards_and_fp32_export(tmp_path, converted):
  """--shard-size re-plans the files (HF's greedy rule); --dtype fp32 widens exactly."""
  root, _, kind = converted
  out = tmp_path / "fp32"
  convert.jax_to_hf(root / "jax", out, shard_size="1.5MB", dtype="fp32", progress=False)
  index = json.loads((out / st.INDEX_FILE).read_text())
  files = sorted(set(index["weight_map"].values()))
  n = len(files)
  assert files == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
  back = tensors_of(out)
  assert index["metadata"]["total_size"] == sum(a.nbytes for a in back.values())
  for f in files:
    assert (out / f).stat().st_size <= 1.5e6 + 10_000
  source = tensors_of(root / "hf")
  for name, a in back.items():
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, source[name].astype(np.float32))


def test_widened_then_narrowed_round_trip_is_bitwise(tmp_path, tiny_cfg, hf_weights):
  """bf16 source stored as fp32 (--dtype fp32), exported with 'auto' = the recorded dtypes."""
  write_hf(tmp_path / "hf", tiny_cfg, hf_weights, BF16)
  convert.hf_to_jax(tmp_path / "hf", tmp_path / "jax", dtype="fp32", progress=False)
  reader = ckpt.ParamReader(ckpt.checkpoint_manager(tmp_path / "jax", read_only=True))
  assert set(reader.dtypes.values()) == {np.dtype(np.float32)}
  convert.jax_to_hf(tmp_path / "jax", tmp_path / "back", progress=False)
  assert_bitwise(tensors_of(tmp_path / "hf"), tensors_of(tmp_path / "back"))


@pytest.mark.heavy
def test_logits_after_conversion_match_the_torch_reference(tmp_path, tiny_cfg, hf_weights):
  write_hf(tmp_path / "hf", tiny_cfg, hf_weights, np.float32)
  convert.hf_to_jax(tmp_path / "hf", tmp_path / "jax", progress=False)
  manager = ckpt.checkpoint_manager(tmp_path / "jax", read_only=True)
  cfg = ckpt.restore_config(manager)
  assert cfg == tiny_cfg.replace(dtype=cfg.dtype)
  cfg = cfg.replace(dtype="float32")
  params = ckpt.restore_params(manager, ckpt.abstract_params(cfg))
  model = model_from_params(cfg, flatten(params))
  # the reference reads the very files the converter read
  weights = {}
  for f in sorted((tmp_path / "hf").glob("*.safetensors")):
    weights.update(load_file(str(f)))
  ref = QwenVLReference(cfg, weights)
  tokens = np.stack([image_row(cfg, 48, [3], seed=11), image_row(cfg, 48, [20], seed=12)])
  images = np.random.default_rng(13).standard_normal((2, 1, 56, 56, 3)).astype(np.float32)
  ours = nnx.jit(lambda m, t, x: m(t, x))(model, tokens, images)
  diff = np.max(np.abs(np.asarray(ours, np.float64) - ref(tokens, images)))
  assert diff <= 1e-4, diff


# ---- validation ------------------------------------------------------------------------------

@pytest.fixture()
def fp32_hf(tmp_path, tiny_cfg, hf_weights):
  write_hf(tmp_path / "hf", tiny_cfg, hf_weights, np.float32, shard_size=10**9, extra_files=False)
  return tmp_path / "hf"


def rewrite(directory: Path, edit) -> None:
  tensors = load_file(str(directory / st.SINGLE_FILE))
  edit(tensors)
  save_file(tensors, str(directory / st.SINGLE_FILE), metadata={"format": "pt"})


def test_missing_extra_and_misshaped_tensors_are_all_reported(fp32_hf, tmp_path):
  def edit(t):
    del t["transformer.h.1.mlp.w2.weight"], t["transformer.visual.proj"]
    t["transformer.h.7.mlp.w1.weight"] = np.zeros((4, 4), np.float32)
    t["transformer.visual.extra_head"] = np.zeros((3,), np.float32)
    t["transformer.ln_f.weight"] = np.ones((255,), np.float32)
    t["transformer.visual.ln_pre.bias"] = np.zeros((64,), np.int32)

  rewrite(fp32_hf, edit)
  with pytest.raises(hf.CheckpointMismatch) as e:
    convert.hf_to_jax(fp32_hf, tmp_path / "out", progress=False)
  msg = str(e.value)
  for needle in ("2 missing tensors", "transformer.h.1.mlp.w2.weight", "transformer.visual.proj",
                 "2 unexpected tensors", "transformer.h.7.mlp.w1.weight",
                 "transformer.visual.extra_head", "transformer.ln_f.weight: shape [255], the "
                 "model expects [256]", "transformer.visual.ln_pre.bias: dtype I32"):
    assert needle in msg, (needle, msg)
  assert not (tmp_path / "out").exists()
  report, ok = convert.inspect(fp32_hf)
  assert "transformer.visual.extra_head" in report and "NOT MAPPED" in report
  assert "missing tensors: 2" in report and "NOT LOADABLE" in report and not ok


def test_pickle_checkpoints_are_refused(tmp_path, fp32_hf):
  pickled = tmp_path / "pickled"
  pickled.mkdir()
  (pickled / "config.json").write_text((fp32_hf / "config.json").read_text())
  (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")
  for path in (pickled, pickled / "pytorch_model.bin"):
    with pytest.raises(st.CheckpointFormatError, match="never loaded.*safetensors"):
      convert.hf_to_jax(path, tmp_path / "out", progress=False)
  # next to safetensors a pickle is ignored (and reported by inspect), never read
  (fp32_hf / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")
  assert "ignored pickle files (never loaded): pytorch_model.bin" in convert.inspect(fp32_hf)[0]


def test_inconsistent_index_and_nonempty_output_are_errors(tmp_path, tiny_cfg, hf_weights):
  write_hf(tmp_path / "hf", tiny_cfg, hf_weights, BF16)
  good = (tmp_path / "hf" / st.INDEX_FILE).read_text()
  index = json.loads(good)
  index["weight_map"]["transformer.wte.weight"] = "model-00002-of-00006.safetensors"
  (tmp_path / "hf" / st.INDEX_FILE).write_text(json.dumps(index))
  with pytest.raises(st.CheckpointFormatError, match="transformer.wte.weight: .* says"):
    st.HFReader(tmp_path / "hf")
  (tmp_path / "hf" / st.INDEX_FILE).write_text(good)
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "notes.txt").write_text("")
  with pytest.raises(BadInput, match="not empty"):
    convert.hf_to_jax(tmp_path / "hf", tmp_path / "out", progress=False)


@pytest.mark.e2e
def test_cli_both_directions_and_inspect(tmp_path, tiny_cfg, hf_weights):
  write_hf(tmp_path / "hf", tiny_cfg, hf_weights, BF16)
  run = lambda *a: subprocess.run([sys.executable, "-m", "bird_jax.convert", *a],
                                  capture_output=True, text=True, timeout=300)
  r = run("hf-to-jax", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "jax"))
  assert r.returncode == 0, r.stderr
  assert json.loads(r.stdout.strip().splitlines()[-1])["tensors"] == 61
  r = run("jax-to-hf", "--ckpt", str(tmp_path / "jax"), "--out", str(tmp_path / "cli"),
          "--shard-size", "4GB")
  assert r.returncode == 0, r.stderr
  report = json.loads(r.stdout.strip().splitlines()[-1])
  assert report["files"] == 1 and report["tensors"] == 61
  assert (tmp_path / "cli" / st.SINGLE_FILE).exists()
  assert not (tmp_path / "cli" / st.INDEX_FILE).exists()
  assert_bitwise(tensors_of(tmp_path / "hf"), tensors_of(tmp_path / "cli"))
  assert exit_code(convert.main, ["hf-to-jax", "--hf", str(tmp_path / "nowhere"),
                                  "--out", str(tmp_path / "x")]) == 2
  text, ok = convert.inspect(tmp_path / "jax")
  assert "llm.h.mlp.w1.kernel" in text and "transformer.h.{0..1}.mlp.w1.weight (linear1)" in text
  assert "hf_assets/: config.json, modeling_qwen.py, qwen.tiktoken" in text
  assert "parameters match model_config" in text and ok
  assert "read back: step 0: 41 parameters" in text and "all finite" in text
  text, ok = convert.inspect(tmp_path / "hf")
  assert "transformer.visual.transformer.resblocks.1.attn.in_proj.weight" in text
  assert "visual.blocks.attn.in_proj.kernel[1]  (vit_interleaved_qkv)" in text
  assert "OK: every tensor maps onto the model" in text and ok


def test_trained_checkpoint_exports_with_assets_from_the_hf_folder(tmp_path, tiny_cfg,
                                                                   hf_weights, tiny_model):
  """A trainer's checkpoint (jax.Array params + model_config, no hf_source) -> HF bf16, with
  the tokenizer/model code taken from the original HF folder (--assets)."""
  write_hf(tmp_path / "hf", tiny_cfg, hf_weights, np.float32)
  params = flatten(nnx.state(tiny_model))
  manager = ckpt.checkpoint_manager(tmp_path / "run")
  ckpt.save(manager, 5, params={p: jax.numpy.asarray(v) for p, v in params.items()},
            config=tiny_cfg)
  manager.wait_until_finished()
  assert convert.main(["jax-to-hf", "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "out"),
                       "--dtype", "bf16", "--assets", str(tmp_path / "hf")]) == 0
  out = tensors_of(tmp_path / "out")
  want = {n: a for n, a in hf.params_to_hf({p: np.asarray(v) for p, v in params.items()},
                                           tiny_cfg, dtype_for=lambda e: BF16)}
  assert_bitwise(want, out)
  for name in ("qwen.tiktoken", "modeling_qwen.py", "generation_config.json"):
    assert (tmp_path / "out" / name).exists(), name
  config = json.loads((tmp_path / "out" / "config.json").read_text())
  assert config["torch_dtype"] == "bfloat16" and config["bf16"] and not config["fp32"]
  assert json.loads((tmp_path / "out" / "config.json").read_text())["visual"]["layers"] == 2


@pytest.mark.faults
@pytest.mark.parametrize("text, match", [
    (None, r"config.json: missing key 'num_attention_heads' \(a Qwen-VL config.json has it\)"),
    ('{"model_type": "qwen",\n', r"config.json: not valid JSON \(Expecting .* at line 2 column 1\)"),
    ("[1, 2]", r"config.json: expected a JSON object, got list"),
])
def test_bad_config_json_is_named_with_what_is_wrong(tmp_path, tiny_cfg, hf_weights, text, match,
                                                     fault_log):
  write_hf(tmp_path / "hf", tiny_cfg, hf_weights, BF16)
  path = tmp_path / "hf" / "config.json"
  if text is None:
    config = json.loads(path.read_text())
    del config["num_attention_heads"]
    text = json.dumps(config)
  path.write_text(text)
  with pytest.raises(ValueError, match=match):
    convert.hf_to_jax(tmp_path / "hf", tmp_path / "out", progress=False)
  assert exit_code(convert.main, ["hf-to-jax", "--hf", str(tmp_path / "hf"), "--out",
                                  str(tmp_path / "out")]) == 2
  assert str(path) in convert.inspect(tmp_path / "hf")[0]
  fault_log(what="hf-to-jax: broken config.json")


@pytest.mark.faults
def test_non_finite_weights_are_refused_by_export_and_flagged_by_inspect(tmp_path, tiny_cfg,
                                                                         tiny_model, fault_log):
  params = {p: np.array(v) for p, v in flatten(nnx.state(tiny_model)).items()}
  params["llm.h.mlp.w1.kernel"][1, 3, :5] = np.nan
  manager = ckpt.checkpoint_manager(tmp_path / "run")
  ckpt.save(manager, 5, params=params, config=tiny_cfg)
  manager.wait_until_finished()
  out = tmp_path / "out"
  with pytest.raises(convert.NonFiniteWeights, match=r"step 5: transformer.h.1.mlp.w1.weight "
                                                     r"holds 5 NaN/inf value"):
    convert.jax_to_hf(tmp_path / "run", out, progress=False)
  assert not out.exists()
  assert exit_code(convert.main, ["jax-to-hf", "--ckpt", str(tmp_path / "run"), "--out",
                                  str(out)]) == 4
  assert convert.main(["jax-to-hf", "--ckpt", str(tmp_path / "run"), "--out", str(out),
                       "--allow-non-finite"]) == 0
  text, ok = convert.inspect(tmp_path / "run")
  assert not ok and "5 of" in text and "NaN/inf in 1 parameter(s) (most in llm.h.mlp.w1.kernel)" in text
  assert exit_code(convert.main, ["inspect", str(tmp_path / "run")]) == 2
  assert convert.main(["inspect", "--no-verify", str(tmp_path / "run")]) == 0
  fault_log(what="jax-to-hf / inspect on NaN weights")


def test_a_training_workdir_stands_for_its_checkpoints(tmp_path, tiny_cfg, tiny_model, capsys):
  """inspect WORKDIR and --ckpt WORKDIR read WORKDIR/checkpoints, as eval.py and chat do."""
  params = {p: np.array(v) for p, v in flatten(nnx.state(tiny_model)).items()}
  manager = ckpt.checkpoint_manager(tmp_path / "run" / "checkpoints")
  ckpt.save(manager, 4, params=params, config=tiny_cfg)
  manager.wait_until_finished()
  (tmp_path / "run" / "config.json").write_text("{}")  # a workdir holds the run's config too
  text, ok = convert.inspect(tmp_path / "run")
  assert ok and f"Orbax checkpoint {tmp_path / 'run' / 'checkpoints'}: steps [4]" in text
  assert exit_code(convert.main, ["inspect", "--no-verify", str(tmp_path / "run")]) == 0
  assert exit_code(convert.main, ["jax-to-hf", "--ckpt", str(tmp_path / "run"), "--out",
                                  str(tmp_path / "hf"), "--dtype", "fp32"]) == 0
  assert (tmp_path / "hf" / "config.json").exists()
  capsys.readouterr()
  assert exit_code(convert.main, ["inspect", str(tmp_path / "nowhere")], convert.PROG) == 2
  (line,) = capsys.readouterr().err.strip().splitlines()
  assert line.startswith("python -m bird_jax.convert: error: ")
  assert str(tmp_path / "nowhere") in line


@pytest.mark.faults
def test_inspect_reads_every_parameter_back(tmp_path, tiny_cfg, hf_weights, fault_log):
  """A truncated data file: inspect names the unreadable parameters instead of saying OK."""
  write_hf(tmp_path / "hf", tiny_cfg, hf_weights, BF16)
  convert.hf_to_jax(tmp_path / "hf", tmp_path / "jax", progress=False)
  data = sorted((tmp_path / "jax" / "0" / "params").rglob("d/*"), key=lambda p: p.stat().st_size)
  os.truncate(data[-1], 100)
  text, ok = convert.inspect(tmp_path / "jax")
  assert not ok and "unreadable" in text and "OUT_OF_RANGE" in text, text
  fault_log(what="inspect on a truncated checkpoint")


def test_export_metadata_is_what_the_release_code_loads(tmp_path):
  """A qwen-tokenizer model exported without the release's files gets Qwen-VL-Chat's
  tokenizer_config.json (AutoTokenizer -> tokenization_qwen.QWenTokenizer), qwen.tiktoken, the
  generation config, and a config.json whose auto_map names the release's model code."""
  from bird_jax.config import get_preset

  convert._write_metadata(tmp_path, tmp_path / "no_assets", get_preset("qwen_vl_7b"), {},
                          {convert.DTYPES["bf16"]})
  tok = json.loads((tmp_path / "tokenizer_config.json").read_text())
  assert tok["auto_map"]["AutoTokenizer"] == ["tokenization_qwen.QWenTokenizer", None]
  assert tok["tokenizer_class"] == "QWenTokenizer"
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_qwen.QWenLMHeadModel"
  assert config["torch_dtype"] == "bfloat16" and config["vocab_size"] == 151936
  assert (tmp_path / "qwen.tiktoken").stat().st_size > 1_000_000
  assert json.loads((tmp_path / "generation_config.json").read_text())["chat_format"] == "chatml"


def testmaterialize_equals_numpys_copy_for_every_layout():
  """The fast copies (bytes as integers, tiled transposes) give numpy's result bit for bit."""
  rng = np.random.default_rng(0)
  w = rng.standard_normal((600, 520), dtype=np.float32).astype(ml_dtypes.bfloat16)  # > 512 KiB
  big = np.tile(w, (2, 2))  # 1.2 M elements: the tiled path
  views = [big.T, big.T.reshape(1040, 8, 150), hf.VIT_QKV.to_jax(big[:900, :1040], (1040, 3, 6, 50)),
           big, w.T]
  for view in views:
    for dtype in (None, np.float32):
      got = hf.materialize(view, dtype)
      want = np.ascontiguousarray(view, dtype=view.dtype if dtype is None else dtype)
      assert got.flags.c_contiguous and got.dtype == want.dtype and got.shape == want.shape
      assert np.array_equal(got.view(np.uint8), want.view(np.uint8))
