"""The run manifest writer (bird_jax/manifest.py) and the environment record
(bird_jax/environment.py): segments, hashes taken in the background or while writing, atomic
replacement. The tools' own manifests are checked where they run: tests/test_audit.py (train,
eval, datagen), tests/test_convert.py (convert)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from pathlib import Path

import numpy as np

from bird_jax import environment as E
from bird_jax import manifest as M
from bird_jax import xla_cpu
from bird_jax.checkpoint import safetensors_io as st


def test_a_resumed_run_appends_a_segment_and_a_new_one_starts_over(tmp_path, monkeypatch):
  monkeypatch.setattr("sys.argv", ["tool", "--x=1"])
  first = M.Manifest(tmp_path, "datagen", {"seed": 0, "n": {"a": 1}}, with_devices=False)
  on_disk = json.loads((tmp_path / M.MANIFEST).read_text())  # written at the start
  assert (on_disk["format"], on_disk["version"], on_disk["kind"]) == (M.FORMAT, M.VERSION,
                                                                       "datagen")
  assert on_disk["segments"][0]["end"] is None and on_disk["segments"][0]["argv"] == ["tool",
                                                                                      "--x=1"]
  (tmp_path / "out.txt").write_text("out")
  first.hash_now("outputs", "files", [tmp_path / "out.txt"])
  first.close(outcome="done", chunks=3)
  again = M.Manifest(tmp_path, "datagen", {"seed": 0, "n": {"a": 2}}, resume=True,
                     with_devices=False)
  again.close(outcome="done")
  data = M.read(tmp_path)
  assert [s["outcome"] for s in data["segments"]] == ["done", "done"]
  assert data["segments"][0]["chunks"] == 3 and data["segments"][1]["config_changed"] == ["n.a"]
  assert data["outputs"]["files"] == {"out.txt": {"sha256": hashlib.sha256(b"out").hexdigest(),
                                                  "bytes": 3}}
  assert data["config"] == {"seed": 0, "n": {"a": 2}}
  fresh = M.Manifest(tmp_path, "datagen", {}, with_devices=False)  # not a resume: replaced
  fresh.close(outcome="done")
  assert len(M.read(tmp_path)["segments"]) == 1 and not M.read(tmp_path)["outputs"]
  assert sorted(p.name for p in tmp_path.iterdir()) == [M.MANIFEST, "out.txt"]  # no temp file


def test_hashes_taken_in_the_background_and_while_writing_are_the_files_sha256(tmp_path):
  files = []
  for i, size in enumerate((0, 5, (1 << 22) + 3)):  # empty, small, more than one read block
    files.append(tmp_path / f"f{i}")
    files[-1].write_bytes(os.urandom(size))
  m = M.Manifest(tmp_path, "convert", {}, with_devices=False, write=False)
  m.hash_later("inputs", "blobs", files + [tmp_path / "gone"])
  m.close(outcome="done")
  got = M.read(tmp_path)["inputs"]["blobs"]
  for f in files:
    assert got[f.name] == {"sha256": hashlib.sha256(f.read_bytes()).hexdigest(),
                           "bytes": f.stat().st_size}
  assert got["gone"] == {"error": "No such file or directory"}
  hashes = {}
  tensors = {"a": np.arange(6, dtype=np.float32), "b": np.ones((300, 700), np.float32)}
  specs = {"x.safetensors": [st.TensorSpec(n, t.shape, t.dtype) for n, t in tensors.items()]}
  st.write_sharded(tmp_path / "hf", specs, tensors.__getitem__, hashes=hashes)
  assert hashes == {"x.safetensors": M.file_entry(tmp_path / "hf" / "x.safetensors")}


def test_the_environment_record_names_what_differs():
  env = E.environment(mesh={"data": 8, "fsdp": 1, "tensor": 1})
  assert env["packages"]["jax"] == importlib.metadata.version("jax")
  assert env["packages"]["transformers"] == E.package_version("transformers")
  assert env["code"]["bird_jax"] == importlib.metadata.version("bird_jax")
  assert env["devices"]["count"] == 8 and env["devices"]["kind"]  # conftest's host devices
  assert env["xla_cpu"] == xla_cpu.describe()
  if (Path(E.__file__).resolve().parents[1] / ".git").exists():
    assert len(env["code"]["git_commit"]) == 40 and isinstance(env["code"]["git_dirty"], bool)
  assert E.differences(env, env) == [] and E.same_numerics(env, env)
  other = json.loads(json.dumps(env))
  other["packages"]["jax"] = "0.0.1"
  other["code"]["git_dirty"] = not env["code"]["git_dirty"]
  assert E.differences(other, env) == [
      f"code.git_dirty: {other['code']['git_dirty']!r} -> {env['code']['git_dirty']!r}",
      f"packages.jax: '0.0.1' -> {env['packages']['jax']!r}"]
  assert not E.same_numerics(other, env)
  other["packages"]["jax"] = env["packages"]["jax"]
  assert E.same_numerics(other, env)  # the code's identity is no numerics difference
  assert E.environment(with_devices=False)["devices"] is None
