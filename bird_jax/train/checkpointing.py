"""Train checkpoints: one Orbax `CheckpointManager` under `<workdir>/checkpoints`.

Every step holds the model parameters (trainable and frozen together, so any train checkpoint
is also a params checkpoint for `eval.py` and `convert jax-to-hf`), the model config, the
optimizer state, the data-iterator state and the resolved run config.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from bird_jax.checkpoint import orbax as ckpt
from bird_jax.checkpoint.hf import flatten, unflatten
from bird_jax.config import QwenVLConfig
from bird_jax.train.state import Layout, place_params

OPT, DATA, RUN_CONFIG = "opt_state", "data_iter", "train_config"


class TrainCheckpointer:
  def __init__(self, workdir: str, *, keep: int, async_save: bool = True):
    self.directory = os.path.join(workdir, "checkpoints")
    self.manager = ckpt.checkpoint_manager(
        self.directory, max_to_keep=keep, async_save=async_save,
        extra_handlers={OPT: ocp.StandardCheckpointHandler(), DATA: ocp.JsonCheckpointHandler(),
                        RUN_CONFIG: ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: dict[str, Any], frozen: Any, *, data_state: dict[str, Any],
           run_config: dict[str, Any], model_config: QwenVLConfig) -> None:
    params = nnx.to_pure_dict(nnx.merge_state(state["params"], frozen))
    ckpt.save(self.manager, step, params=params, config=model_config, force=True, extra={
        OPT: ocp.args.StandardSave(state["opt"]), DATA: ocp.args.JsonSave(data_state),
        RUN_CONFIG: ocp.args.JsonSave(run_config)})

  def restore(self, layout: Layout, step: int | None = None
              ) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """(state, frozen, data-iterator state) of `step` (default: the latest), on the layout's
    shardings whatever mesh they were saved from."""
    step = self.manager.latest_step() if step is None else step
    trainable, frozen = restore_params_on(self.manager, layout, step)
    opt_target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                              layout.abstract_state["opt"], layout.state_shardings["opt"])
    out = self.manager.restore(step, args=ocp.args.Composite(
        **{OPT: ocp.args.StandardRestore(opt_target), DATA: ocp.args.JsonRestore()}))
    state = {"step": jax.device_put(jax.numpy.asarray(step, jax.numpy.int32),
                                    layout.state_shardings["step"]),
             "params": trainable, "opt": out[OPT]}
    return state, frozen, out[DATA]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def restore_params_on(manager: ocp.CheckpointManager, layout: Layout, step: int | None = None
                      ) -> tuple[Any, Any]:
  """(trainable, frozen) of a params checkpoint, read straight onto the layout's shardings
  (whatever mesh it was saved from)."""
  abstract = {**flatten(_with_shardings(layout.abstract_params, layout.state_shardings["params"])),
              **flatten(_with_shardings(layout.abstract_frozen, layout.frozen_shardings))}
  params = flatten(ckpt.restore_params(manager, unflatten(abstract), step))
  return (place_params(layout.abstract_params, layout.state_shardings["params"], params.__getitem__),
          place_params(layout.abstract_frozen, layout.frozen_shardings, params.__getitem__))


def _with_shardings(abstract: Any, shardings: Any) -> dict[str, Any]:
  flat_a, flat_s = flatten(abstract), flatten(shardings)
  return unflatten({k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=flat_s[k])
                    for k, v in flat_a.items()})
