"""Orbax checkpoints: save on one mesh layout, restore on another (8 forced host devices);
streamed (block-by-block) saves; per-layer reads; extra trainer items in the same manager."""

from __future__ import annotations

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from jax.sharding import AxisType

from bird_jax.checkpoint import orbax as ckpt
from bird_jax.tree_paths import flatten


def mesh(shape):
  return jax.make_mesh(shape, ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)


@pytest.fixture(scope="module")
def tiny_params(tiny_model):
  return flatten(nnx.state(tiny_model))


@pytest.mark.heavy
def test_restore_onto_a_different_mesh(tmp_path, tiny_cfg, tiny_params):
  save_mesh, restore_mesh = mesh((1, 8, 1)), mesh((2, 2, 2))
  saved_target = flatten(ckpt.abstract_params(tiny_cfg, save_mesh))
  on_save_mesh = {p: jax.device_put(np.asarray(v), saved_target[p].sharding)
                  for p, v in tiny_params.items()}
  w1 = on_save_mesh["llm.h.mlp.w1.kernel"]
  assert w1.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  assert len(w1.addressable_shards) == 8 and w1.addressable_shards[0].data.shape == (2, 32, 512)

  manager = ckpt.checkpoint_manager(tmp_path / "run")
  assert ckpt.save(manager, 7, params=on_save_mesh, config=tiny_cfg)
  manager.wait_until_finished()

  target = ckpt.abstract_params(tiny_cfg, restore_mesh)
  restored = flatten(ckpt.restore_params(ckpt.checkpoint_manager(tmp_path / "run"), target))
  flat_target = flatten(target)
  assert sorted(restored) == sorted(tiny_params)
  for path, value in restored.items():
    assert value.sharding == flat_target[path].sharding, path
    np.testing.assert_array_equal(np.asarray(value), np.asarray(tiny_params[path]))
  w1 = restored["llm.h.mlp.w1.kernel"]
  assert w1.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  assert w1.addressable_shards[0].data.shape == (2, 128, 256)  # fsdp=2, tensor=2 now
  assert ckpt.restore_config(manager) == tiny_cfg


def test_streamed_array_is_written_block_by_block(tmp_path, monkeypatch):
  """A stacked parameter produced one layer at a time (above the in-memory threshold, lowered
  here to 1 MiB): each block is requested once, the file holds one chunk per layer, and it
  restores (cast to fp32) and reads per layer."""
  monkeypatch.setattr(ckpt, "SMALL_BYTES", 2**20)
  layers, shape = 4, (4, 1024, 1024)
  rng = np.random.default_rng(0)
  full = rng.standard_normal(shape, dtype=np.float32).astype(ml_dtypes.bfloat16)
  calls = []

  def block(i):
    calls.append(i)
    return full[i:i + 1]

  streamed = ckpt.StreamedArray(shape, full.dtype, layers, block)
  assert streamed.nbytes > ckpt.SMALL_BYTES
  manager = ckpt.checkpoint_manager(tmp_path / "s")
  ckpt.save(manager, 0, params={"stack": {"w": streamed}, "bias": np.arange(5, dtype=np.float32)})
  assert calls == [0, 1, 2, 3]
  meta = manager.item_metadata(0)[ckpt.PARAMS]
  assert tuple(meta.tree["stack"]["w"].storage.chunk_shape) == (1, 1024, 1024)

  reader = ckpt.ParamReader(manager)
  assert reader.shapes == {"stack.w": shape, "bias": (5,)}
  assert reader.read("stack.w", 2).tobytes() == full[2].tobytes()
  np.testing.assert_array_equal(reader.read("bias"), np.arange(5, dtype=np.float32))

  target = {"stack": {"w": jax.ShapeDtypeStruct(shape, np.float32)},
            "bias": jax.ShapeDtypeStruct((5,), np.float32)}
  out = ckpt.restore_params(manager, target)
  assert out["stack"]["w"].dtype == np.float32
  np.testing.assert_array_equal(np.asarray(out["stack"]["w"]), full.astype(np.float32))


def test_streamed_block_of_the_wrong_shape_is_an_error(tmp_path):
  bad = ckpt.StreamedArray((2, 3), np.dtype(np.float32), 2, lambda i: np.zeros((1, 4), np.float32))
  with pytest.raises(ValueError, match=r"block 0 is float32\[1, 4\], expected float32\[1, 3\]"):
    ckpt.save(ckpt.checkpoint_manager(tmp_path / "bad"), 0, params={"w": bad})


def test_trainer_items_share_the_manager(tmp_path, tiny_cfg):
  """The API the trainer uses: extra items (optimizer state, run config) beside params, the
  latest step found, old steps pruned by max_to_keep."""
  extra = {"opt_state": ocp.StandardCheckpointHandler(),
           "train_config": ocp.JsonCheckpointHandler()}
  manager = ckpt.checkpoint_manager(tmp_path / "t", max_to_keep=2, extra_handlers=extra)
  for step in (10, 20, 30):
    ckpt.save(manager, step, params={"w": np.full((3,), step, np.float32)}, config=tiny_cfg,
              extra={"opt_state": ocp.args.StandardSave({"mu": np.full((3,), -step, np.float32),
                                                         "count": np.int32(step)}),
                     "train_config": ocp.args.JsonSave({"lr": 2e-5, "step": step})})
  manager.wait_until_finished()
  assert manager.all_steps() == [20, 30]
  again = ckpt.checkpoint_manager(tmp_path / "t", extra_handlers=extra)
  params = ckpt.restore_params(again, {"w": jax.ShapeDtypeStruct((3,), np.float32)})
  np.testing.assert_array_equal(np.asarray(params["w"]), [30, 30, 30])
  opt = again.restore(30, args=ocp.args.Composite(opt_state=ocp.args.StandardRestore()))
  np.testing.assert_array_equal(np.asarray(opt["opt_state"]["mu"]), [-30, -30, -30])
  assert ckpt.restore_json(again, "train_config") == {"lr": 2e-5, "step": 30}
  assert ckpt.restore_json(again, ckpt.HF_SOURCE) is None
  with pytest.raises(FileNotFoundError, match="no checkpoint step 10"):
    ckpt.restore_params(again, {"w": jax.ShapeDtypeStruct((3,), np.float32)}, step=10)
