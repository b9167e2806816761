"""Multi-process training and evaluation on this machine: 2 local processes x 2 CPU devices
(`jax.distributed` with a localhost coordinator, gloo collectives) against 1 process x 4
devices, same config: train.py and eval.py themselves in child processes (the commands of
docs/training.md). One process is killed with kill -9 mid-run; the other must end by itself
within the default heartbeat timeout, and the rerun of both must give the uninterrupted
single-process run's losses, checkpoint and data position."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from bird_jax.train.checkpointing import DATA, TrainCheckpointer
from bird_jax import distributed
from bird_jax.train.config import default_config
from bird_jax_testing.bounds import HEARTBEAT_NOTICE_S
from test_faults_train import COMPILE_CACHE, RUN, losses, poisoned

ROOT = Path(__file__).resolve().parents[1]
ENTRY = str(ROOT / "tests" / "multihost_entry.py")
STEPS = 6
# a survivor ends within the heartbeat timeout (distributed.HEARTBEAT_S unless
# train.heartbeat_timeout_s says otherwise) plus the time the runtime takes to notice and abort
HEARTBEAT_S = distributed.HEARTBEAT_S
NOTICE_S = HEARTBEAT_NOTICE_S
TRAIN = {**RUN, "train.steps": STEPS, "data.streams": 2, "mesh.data": -1}


def test_a_launch_without_its_process_id_is_refused(monkeypatch):
  from bird_jax import distributed

  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1")
  monkeypatch.delenv("JAX_PROCESS_ID", raising=False)
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES=2 needs JAX_COORDINATOR_ADDRESS and "
                                       "JAX_PROCESS_ID too"):
    distributed.initialize()


def test_the_heartbeat_timeout_comes_from_the_config(monkeypatch):
  """train passes train.heartbeat_timeout_s; without a value the environment's, else 15 s
  (JAX's own default, 100 s, would keep a dead peer's partner idle for minutes)."""
  from bird_jax import distributed

  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("JAX_PROCESS_ID", "0")
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1")
  monkeypatch.delenv("JAX_HEARTBEAT_TIMEOUT_SECONDS", raising=False)
  distributed.initialize()
  distributed.initialize(heartbeat_timeout_s=7)
  monkeypatch.setenv("JAX_HEARTBEAT_TIMEOUT_SECONDS", "30")
  distributed.initialize()
  assert [c["heartbeat_timeout_seconds"] for c in calls] == [15, 7, 30]
  assert default_config().train.heartbeat_timeout_s == 0  # 0: the environment's, else 15


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch(script: str, args: list[str], logs: Path, processes: int, devices: int = 4,
           **env) -> list[subprocess.Popen]:
  """`script` (train.py / eval.py) as `processes` processes sharing `devices` CPU devices, each
  with its own JAX_PROCESS_ID; stdout+stderr to logs.<i>."""
  base = {**os.environ, **COMPILE_CACHE, "XLA_FLAGS": "",
          "JAX_NUM_CPU_DEVICES": str(devices // processes), **env}
  if processes > 1:
    base.update(JAX_COORDINATOR_ADDRESS=f"localhost:{free_port()}",
                JAX_NUM_PROCESSES=str(processes))
    base.pop("JAX_HEARTBEAT_TIMEOUT_SECONDS", None)  # the defaults are what is tested
  procs = []
  for i in range(processes):
    with open(f"{logs}.{i}", "w") as log:
      procs.append(subprocess.Popen([sys.executable, ENTRY, script, *args], cwd=ROOT,
                                    env={**base, "JAX_PROCESS_ID": str(i)}, stdout=log,
                                    stderr=subprocess.STDOUT))
  return procs


def wait(procs: list[subprocess.Popen], logs: Path, timeout: float = 600) -> list[int]:
  codes = [p.wait(timeout=timeout) for p in procs]
  assert codes == [0] * len(procs), "\n".join(
      Path(f"{logs}.{i}").read_text()[-3000:] for i in range(len(procs)))
  return codes


def train_args(workdir: Path, shards: str, init: Path) -> list[str]:
  settings = {**TRAIN, "data.shards": shards, "train.workdir": str(workdir), "init.ckpt": init}
  return ["--config", str(ROOT / "configs" / "demo.py"),
          *(f"--config.{k}={v}" for k, v in settings.items())]


def records(log: Path, process: int) -> set[str]:
  path = Path(f"{log}.{process}")
  return set(path.read_text().split()) if path.exists() else set()


def saved(workdir: Path, step: int) -> tuple[dict, dict]:
  """(parameters as numpy, data-iterator state) of a checkpoint step."""
  from bird_jax.checkpoint.orbax import ParamReader, restore_json

  c = TrainCheckpointer(str(workdir), keep=100)
  reader = ParamReader(c.manager, step)
  out = {k: reader.read(k) for k in reader.arrays}, restore_json(c.manager, DATA, step)
  c.close()
  return out


@pytest.fixture(scope="module")
def init(tiny_cfg, tiny_model, tmp_path_factory) -> Path:
  """The runs start from these weights (a restore compiles nothing, a random init would)."""
  from flax import nnx

  from bird_jax.checkpoint import orbax as ockpt

  path = tmp_path_factory.mktemp("init") / "ckpt"
  mngr = ockpt.checkpoint_manager(path)
  ockpt.save(mngr, 0, params=nnx.to_pure_dict(nnx.state(tiny_model)), config=tiny_cfg)
  mngr.wait_until_finished()
  return path


@pytest.fixture(scope="module")
def single(shards, init, tmp_path_factory):
  """The reference: 1 process x 4 devices, uninterrupted."""
  d = tmp_path_factory.mktemp("single")
  wait(launch("train.py", train_args(d / "run", shards, init), d / "log", 1,
              RECORDS_LOG=str(d / "records")), d / "log")
  return {"dir": d / "run", "losses": losses(d / "run"), "records": records(d / "records", 0),
          "init": init}


@pytest.mark.e2e
@pytest.mark.faults
def test_two_processes_train_as_one_and_resume_after_one_is_killed(single, shards, tmp_path,
                                                                    fault_log):
  w, logs, reads = tmp_path / "run", tmp_path / "log", tmp_path / "records"
  t0 = time.time()
  args = train_args(w, shards, single["init"])
  procs = launch("train.py", args, logs, 2, RECORDS_LOG=str(reads))
  while (max(losses(w), default=0) < 3 or not (w / "checkpoints" / "2").is_dir()) \
      and all(p.poll() is None for p in procs) and time.time() - t0 < 300:
    time.sleep(0.1)
  procs[1].send_signal(signal.SIGKILL)
  killed_at = time.time()
  survivor = procs[0].wait(timeout=HEARTBEAT_S + 60)  # ended by JAX, not waiting forever
  ended_after = time.time() - killed_at
  procs[1].wait()
  assert survivor == -signal.SIGABRT, Path(f"{logs}.0").read_text()[-3000:]
  assert "another task died" in Path(f"{logs}.0").read_text()
  assert ended_after <= HEARTBEAT_S + NOTICE_S, ended_after

  wait(launch("train.py", args, tmp_path / "rerun", 2, RECORDS_LOG=str(reads)),
       tmp_path / "rerun")
  got, ref = losses(w), single["losses"]
  assert sorted(got) == list(range(1, STEPS + 1))
  diff = max(abs(got[s] - ref[s]) / abs(ref[s]) for s in ref)
  assert diff <= 1e-6, (got, ref)

  read = [records(reads, i) for i in (0, 1)]  # both launches, each process
  lost, duplicated = single["records"] - (read[0] | read[1]), read[0] & read[1]
  assert not lost and not duplicated and read[0] | read[1] == single["records"]
  assert len(single["records"]) == 24  # every record of the shards

  assert sorted(p.name for p in (w / "checkpoints").iterdir()) == ["2", "4", "6"]
  params, data = saved(w, STEPS)
  ref_params, ref_data = saved(single["dir"], STEPS)
  assert data == ref_data  # both processes' streams, at the single run's positions
  assert params.keys() == ref_params.keys()
  worst = max(float(np.abs(params[k] - ref_params[k]).max()) for k in params)
  assert worst <= 1e-5  # Adam turns the losses' 1e-7 into parameter differences of ~1e-6
  assert poisoned(w) == 0
  same = sum(got[s] == ref[s] for s in ref)
  print(f"2x2 vs 1x4: loss max rel diff {diff:.2e} ({same}/{STEPS} steps bitwise equal), "
        f"params max abs diff {worst:.2e}; "
        f"survivor ended {ended_after:.1f} s after its peer's kill -9")
  fault_log(what="kill -9 of one of 2 processes", recovered=True, poisoned=poisoned(w),
            lost=len(lost), duplicated=len(duplicated))


@pytest.mark.e2e
@pytest.mark.faults
@pytest.mark.slow
def test_a_signal_to_one_process_stops_both_at_the_same_saved_step(single, shards, tmp_path,
                                                                    fault_log):
  w, logs = tmp_path / "run", tmp_path / "log"
  args = train_args(w, shards, single["init"])
  procs = launch("train.py", args, logs, 2)
  t0 = time.time()
  while max(losses(w), default=0) < 2 and all(p.poll() is None for p in procs) \
      and time.time() - t0 < 300:
    time.sleep(0.1)
  procs[1].send_signal(signal.SIGTERM)  # a preemption notice reaching one host only
  assert [p.wait(timeout=120) for p in procs] == [75, 75]
  step = max(losses(w))
  assert sorted(int(p.name) for p in (w / "checkpoints").iterdir())[-1] == step < STEPS
  assert all(f"stopped at step {step} (signal" in Path(f"{logs}.{i}").read_text() for i in (0, 1))
  wait(launch("train.py", args, tmp_path / "rerun", 2), tmp_path / "rerun")
  got, ref = losses(w), single["losses"]
  assert sorted(got) == list(range(1, STEPS + 1))
  assert max(abs(got[s] - ref[s]) / abs(ref[s]) for s in ref) <= 1e-6
  fault_log(what="SIGTERM to one of 2 processes", recovered=True, poisoned=poisoned(w))


BOX = "<box>(100,120),(400,500)</box>"
QUESTIONS = {"vg": ("Where is the liver?", f"<ref>liver</ref>{BOX}"),
             "roc": (f"What is at {BOX}?", "liver")}


@pytest.mark.e2e
def test_two_processes_generate_the_same_predictions(single, tmp_path):
  data = tmp_path / "data"
  (data / "images").mkdir(parents=True)
  rng = np.random.default_rng(0)
  names = [f"ct_{i:02d}--A--c1--x_000{i}" for i in range(5)]
  for n in names:
    Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(
        data / "images" / f"{n}.png")
  for task, (q, a) in QUESTIONS.items():
    (data / f"test_{task.upper()}.json").write_text(json.dumps([
        {"id": n, "conversations": [
            {"from": "user", "value": f"Picture 1: <img>{n}.png</img>\n{q}"},
            {"from": "assistant", "value": a}]} for n in names]))
  out = {}
  for processes in (1, 2):
    out[processes] = tmp_path / f"eval{processes}"
    args = [f"--ckpt={single['dir']}", f"--data={data}", f"--out={out[processes]}",
            "--config.tasks=vg", "--config.tasks=roc", "--config.batch_size=4",
            "--config.buckets=160", "--config.max_new_tokens.vg=8", "--config.max_new_tokens.roc=8", "--config.gallery=0"]
    logs = tmp_path / f"log{processes}"
    wait(launch("eval.py", args, logs, processes), logs)
  for task in QUESTIONS:
    one = (out[1] / "predictions" / f"{task}.jsonl").read_text()
    assert (out[2] / "predictions" / f"{task}.jsonl").read_text() == one
    assert len(one.splitlines()) == len(names)
