"""The first run on one GPU, in one command of at most 9 minutes: the environment, the device
suite, then the demo base's two-phase curriculum (docs/demo.md), every result in one folder.

    bash bench/first_gpu.sh                        # on the GPU machine; results in $OUT
    bash bench/first_gpu.sh --tiny --out DIR       # the same steps at tiny sizes on the CPU
    .venv/bin/python bench/first_gpu.py --prepare-wheels   # once, on a machine with pip's
                                                           # registry: .device_wheels/

Steps, in order, each with its own time bound (a step that fails or runs out of time is
recorded and the next one runs; no step depends on an earlier one having worked):

  env_jax        JAX's version and backend; on the GPU, where JAX has no GPU backend,
                 `pip install -e '.[cuda]'` (env_pip_cuda, needs a network), then again
  env_modules    which of the project's packages this Python lacks
  env_install    the missing ones from the carried wheels (.device_wheels/missing), into
                 WORK/site/missing, put first on PYTHONPATH
  env_check_*    bench/env_check.py, first with the project's pinned flax/optax/orbax
                 (.device_wheels/pinned, where their versions differ from the machine's), then
                 with the machine's own; the first set that passes is used from here on
  datagen        both phases' scenes (bench/base_datagen.py), on the CPU, niced, beside the suite
  suite          bench/device_suite.py --budget-s B (cheap sections first)
  phase1         python -m bird_jax_demo.base: one bare object per scene
  phase2         up to four bare objects, from phase 1's checkpoints
  phaseN_export  only where a phase was stopped before its own export
  final_probe    the grounding probe on each phase's last checkpoint, where its last probe
                 is older (a run stopped by train.max_minutes does not probe its last step)

The phases' training minutes are fitted to the time left when each starts (at most
--minutes). The output folder (--out, else $OUT, else runs/first_gpu/out) holds seven small
files, rewritten as results come in: summary.md, results.json, device_suite.json, logs.txt,
metrics.jsonl (both phases' rows, probe_* fields included, each with its phase),
probe_curve.png and base.tar.gz (the newest exported base, HF layout, bfloat16).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import shutil
import shlex
import signal
import subprocess
import sys
import tarfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / ".device_wheels"
MISSING_DISTS = {"grain": "grain", "array_record": "array-record",
                 "ml_collections": "ml-collections", "portpicker": "portpicker"}  # module: dist
PINNED_DISTS = ("flax", "optax", "orbax-checkpoint")
DEVICE_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                    "manylinux2014_x86_64", "manylinux1_x86_64")
BARE = ("--config.base.scenes.style=bare", "--config.base.listings.style=bare",
        "--config.base.probe.style=bare")
PHASE_ARGS = {1: ("--config.base.max_labels=1", "--config.base.probe.min_objects=1",
                  "--config.base.scenes.vg=1", "--config.base.scenes.roc=0"),
              2: ("--config.base.max_labels=4",)}
SUITE_SLACK_S = 55  # past --budget-s: the section under way finishes, or is cut
LOG_LIMIT = 12 * 2**20  # logs.txt keeps its last 12 MiB


@dataclasses.dataclass(frozen=True)
class Mode:
  name: str
  platform: str  # the JAX backend the run needs
  deadline_s: float  # the whole run, from its start
  env_s: float  # all env_* steps together
  suite_budget_s: float  # device_suite.py --budget-s; the suite's bound is SUITE_SLACK_S more
  variant: str  # bird_jax_demo/base_config.py's variant
  data: tuple[str, ...]  # config overrides of the scene counts
  ckpt_every: int  # a checkpoint, then a probe, every this many steps
  minutes: tuple[float, float]  # the phases' training minutes at most
  min_minutes: float  # a phase with fewer training minutes left is skipped
  overhead_s: float  # a phase's time beside its training minutes (start, compile, probes, export)
  datagen_wait_s: float  # once the suite is done, how long the phases wait for datagen
  final_probe_s: float
  grace_s: float  # between SIGTERM (the trainer saves) and SIGKILL


MODES = {
    "gpu": Mode("gpu", "gpu", deadline_s=525, env_s=150, suite_budget_s=110, variant="gpu",
                data=("--config.base.scenes.num_images=30000",
                      "--config.base.listings.num_images=6000"),
                ckpt_every=250, minutes=(1.0, 1.5), min_minutes=0.25, overhead_s=60,
                datagen_wait_s=30, final_probe_s=60, grace_s=20),
    "tiny": Mode("tiny", "cpu", deadline_s=1500, env_s=400, suite_budget_s=450, variant="quick",
                 data=(), ckpt_every=4, minutes=(3.0, 0.02), min_minutes=0.01, overhead_s=60,
                 datagen_wait_s=300, final_probe_s=200, grace_s=20),
}


def now_iso() -> str:
  return datetime.datetime.now().isoformat(timespec="seconds")


def atomic_write(path: Path, text: str) -> None:
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def last_json(text: str) -> dict[str, Any] | None:
  """The last line of `text` that parses as a JSON object."""
  for line in reversed(text.splitlines()):
    line = line.strip()
    if line.startswith("{"):
      try:
        return json.loads(line)
      except ValueError:
        continue
  return None


def norm(dist: str) -> str:
  return re.sub(r"[-_.]+", "-", dist).lower()


def wheel_dist(path: Path) -> str:
  return norm(path.name.split("-")[0])


# ---- running steps -----------------------------------------------------------------------------

class Runner:
  """Runs the steps: each in its own process group, its output streamed into OUT/logs.txt, its
  status, time and bound recorded in results.json and summary.md at once."""

  def __init__(self, mode: Mode, out: Path, work: Path, deadline_s: float):
    self.mode, self.out, self.work = mode, out, work
    self.t0, self.deadline_s = time.monotonic(), deadline_s
    self.logs = out / "logs.txt"
    self.results: dict[str, Any] = {
        "meta": {"mode": mode.name, "started": now_iso(), "deadline_s": deadline_s,
                 "python": sys.version.split()[0], "executable": sys.executable,
                 "argv": sys.argv[1:]},
        "steps": {}, "env": {}, "suite": {}, "phases": {}}
    self.pythonpath: list[str] = []
    self.packages = "auto"  # flax/optax/orbax: "auto", "pinned" or "machine" (--packages)

  def elapsed(self) -> float:
    return time.monotonic() - self.t0

  def left(self) -> float:
    return self.deadline_s - self.elapsed()

  def child_env(self, extra: dict[str, str] | None = None, cache: bool = False
                ) -> dict[str, str]:
    """The steps' environment; `cache`: JAX's compilation cache in WORK (phase 2 and the final
    probe reuse phase 1's programs; the suite, which times compilation, goes without)."""
    env = dict(os.environ)
    paths = self.pythonpath + [str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(":") if p]
    env.update(PYTHONPATH=":".join(paths), PYTHONUNBUFFERED="1", TQDM_MININTERVAL="10")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    if cache:
      env["JAX_COMPILATION_CACHE_DIR"] = str(self.work / "jax_cache")
    if self.mode.platform == "cpu":
      env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    env.update(extra or {})
    return env

  def log(self, text: str) -> None:
    with open(self.logs, "a") as f:
      f.write(text)

  def skip(self, name: str, why: str) -> dict[str, Any]:
    rec = {"status": "skipped", "note": why, "at_s": round(self.elapsed(), 1)}
    self.results["steps"][name] = rec
    self.log(f"\n===== [{self.elapsed():6.1f} s] {name}: skipped ({why})\n")
    self.save()
    return rec

  def run(self, name: str, cmd: list[str], cap_s: float, env: dict[str, str] | None = None,
          min_s: float = 5.0, note: str = "", cache: bool = False) -> tuple[dict[str, Any], str]:
    """Runs cmd for at most cap_s, and so that it ends, stopped or not, by the deadline;
    returns (record, its output)."""
    timeout = min(cap_s, self.left() - 5 - self.mode.grace_s)
    if timeout < min_s:
      return self.skip(name, f"{max(self.left(), 0):.0f} s left"), ""
    self.log(f"\n===== [{self.elapsed():6.1f} s] {name} (bound {timeout:.0f} s): "
             f"{' '.join(cmd)}\n")
    start = self.logs.stat().st_size
    t0 = time.monotonic()
    with open(self.logs, "a") as f:
      proc = subprocess.Popen(cmd, cwd=REPO, env=self.child_env(env, cache), stdout=f,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              start_new_session=True)
      rc, timed_out = wait_or_stop(proc, timeout, self.mode.grace_s)
    rec = {"status": "timeout" if timed_out else ("ok" if rc == 0 else "failed"), "rc": rc,
           "seconds": round(time.monotonic() - t0, 1), "bound_s": round(timeout),
           "at_s": round(self.elapsed(), 1)}
    if note:
      rec["note"] = note
    self.results["steps"][name] = rec
    self.log(f"===== {name}: {rec['status']} (rc {rc}) after {rec['seconds']} s\n")
    with open(self.logs, errors="replace") as f:
      f.seek(start)
      output = f.read()
    self.trim_logs()
    self.save()
    return rec, output

  def trim_logs(self) -> None:
    if self.logs.stat().st_size > LOG_LIMIT:
      with open(self.logs, "rb") as f:
        f.seek(-LOG_LIMIT, os.SEEK_END)
        tail = f.read()
      self.logs.write_bytes(b"[... earlier lines cut ...]\n" + tail)

  def save(self) -> None:
    self.results["meta"]["wall_s"] = round(self.elapsed(), 1)
    try:
      atomic_write(self.out / "results.json", json.dumps(self.results, indent=1, default=str))
      atomic_write(self.out / "summary.md", summary(self.results))
    except Exception as e:  # the summary must never stop the run
      self.log(f"(writing results failed: {type(e).__name__}: {e})\n")


def stop_group(proc: subprocess.Popen, grace_s: float) -> int:
  """SIGTERM to the process group (a trainer saves and exits), SIGKILL after grace_s."""
  for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10)):
    try:
      os.killpg(proc.pid, sig)
    except ProcessLookupError:
      break
    try:
      return proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
      continue
  return proc.wait()


def wait_or_stop(proc: subprocess.Popen, timeout: float, grace_s: float) -> tuple[int, bool]:
  try:
    return proc.wait(timeout=timeout), False
  except subprocess.TimeoutExpired:
    return stop_group(proc, grace_s), True


# ---- the environment ---------------------------------------------------------------------------

JAX_PROBE = """import json, jax
print(json.dumps({"jax": jax.__version__, "backend": jax.default_backend(),
                  "devices": [d.device_kind for d in jax.devices()]}))"""

MODULE_PROBE = """import importlib.metadata as md, importlib.util as u, json, sys
def found(m):
  try:
    return u.find_spec(m) is not None
  except Exception:
    return False
def version(d):
  try:
    return md.version(d)
  except md.PackageNotFoundError:
    return None
mods, dists = sys.argv[1].split(","), sys.argv[2].split(",")
print(json.dumps({"modules": {m: found(m) for m in mods},
                  "versions": {d: version(d) for d in dists}}))"""


def env_steps(r: Runner) -> None:
  """JAX, the missing packages, then the first package set whose checks pass."""
  py, env, end = sys.executable, r.results["env"], r.elapsed() + r.mode.env_s
  bound = lambda: end - r.elapsed()
  rec, out = r.run("env_jax", [py, "-c", JAX_PROBE], min(120, bound()))
  env["jax"] = last_json(out) or {"error": rec["status"]}
  if r.mode.platform == "gpu" and env["jax"].get("backend") != "gpu":
    r.run("env_pip_cuda", [py, "-m", "pip", "install", "--retries", "0", "--timeout", "15",
                           "-e", ".[cuda]"], min(240, bound()))
    rec, out = r.run("env_jax_again", [py, "-c", JAX_PROBE], min(120, bound()))
    env["jax"] = last_json(out) or {"error": rec["status"]}
  rec, out = r.run("env_modules", [py, "-c", MODULE_PROBE, ",".join(MISSING_DISTS),
                                   ",".join(PINNED_DISTS)], min(60, bound()))
  found = last_json(out) or {"modules": {}, "versions": {}}
  env["machine"] = found
  missing = [m for m in MISSING_DISTS if not found["modules"].get(m)]
  env["missing"] = missing
  if missing:
    site = install(r, "env_install", [norm(MISSING_DISTS[m]) for m in missing], "missing",
                   bound())
    if site:
      r.pythonpath = [site]
  choose_packages(r, found["versions"], bound)


def install(r: Runner, step: str, dists: list[str], folder: str, bound_s: float) -> str | None:
  """The carried wheels of `dists` into WORK/site/FOLDER; returns that folder, or None."""
  wheels = [w for w in sorted((WHEELS / folder).glob("*.whl")) if wheel_dist(w) in dists]
  lacking = sorted(set(dists) - {wheel_dist(w) for w in wheels})
  r.results["env"][f"{folder}_wheels"] = [w.name for w in wheels]
  if lacking:
    r.results["env"][f"{folder}_lacking"] = lacking
  if not wheels:
    r.skip(step, f"no carried wheels in {WHEELS.name}/{folder} for {', '.join(dists)}")
    return None
  site = r.work / "site" / folder
  shutil.rmtree(site, ignore_errors=True)
  rec, _ = r.run(step, [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(site)]
                 + [str(w) for w in wheels], min(120, bound_s))
  return str(site) if rec["status"] == "ok" else None


def pinned_versions() -> dict[str, str]:
  """{dist: version} of the carried pinned wheels."""
  return {wheel_dist(w): w.name.split("-")[1] for w in (WHEELS / "pinned").glob("*.whl")}


def choose_packages(r: Runner, machine: dict[str, str | None], bound) -> None:
  """bench/env_check.py with the pinned flax/optax/orbax (where they differ from the machine's),
  then with the machine's own (`--packages` keeps one of the two): the first set that passes
  stays on PYTHONPATH; where none passes, the one that passed the most checks."""
  env, base_path = r.results["env"], list(r.pythonpath)
  pinned = pinned_versions()
  differ = [d for d in PINNED_DISTS if pinned.get(d) and pinned[d] != machine.get(d)]
  candidates = []
  if differ and r.packages != "machine":
    site = install(r, "env_install_pinned", differ, "pinned", bound())
    if site:
      candidates.append(("pinned", [site] + base_path))
  if r.packages != "pinned" or not candidates:
    candidates.append(("machine", base_path))
  env["checks"], passed = {}, {}
  for name, paths in candidates:
    r.pythonpath = paths
    rec, out = r.run(f"env_check_{name}", [sys.executable, str(REPO / "bench" / "env_check.py"),
                                            "--platform", r.mode.platform], min(150, bound()))
    report = last_json(out) or {"ok": False, "error": rec["status"]}
    env["checks"][name] = report
    passed[name] = sum(1 for v in report.values() if isinstance(v, dict) and v.get("ok"))
    if report.get("ok"):
      env["packages"] = name
      break
  else:
    best = max(candidates, key=lambda c: passed[c[0]])  # the first of equals
    r.pythonpath = best[1]
    env["packages"] = f"{best[0]} (no set passed every check)"
  env["pythonpath"] = r.pythonpath
  r.save()


# ---- the suite and the curriculum --------------------------------------------------------------

def phase_dir(r: Runner, k: int) -> Path:
  return r.work / f"phase{k}"


def phase_args(r: Runner, k: int) -> list[str]:
  """The base command's flags of phase k (docs/demo.md's curriculum), without the minutes."""
  m = r.mode
  args = [f"--config={REPO / 'bird_jax_demo' / 'base_config.py'}:{m.variant}", *BARE, *m.data,
          f"--config.train.ckpt_every={m.ckpt_every}", *PHASE_ARGS[k],
          f"--out={phase_dir(r, k)}"]
  if k == 2 and has_checkpoint(phase_dir(r, 1)):
    args.append(f"--config.init.ckpt={phase_dir(r, 1) / 'train' / 'checkpoints'}")
  return args


def last_checkpoint(run: Path) -> int | None:
  ckpts = run / "train" / "checkpoints"
  steps = [int(p.name) for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.is_dir() else []
  return max(steps, default=None)


def has_checkpoint(run: Path) -> bool:
  return last_checkpoint(run) is not None


def start_datagen(r: Runner) -> subprocess.Popen | None:
  """Both phases' data on the CPU, niced, while the suite runs (the base command then finds it
  complete). JAX is kept off the GPU there."""
  script = REPO / "bench" / "base_datagen.py"
  lines = [shlex.join([sys.executable, str(script), *phase_args(r, k)]) for k in (1, 2)]
  env = r.child_env({"JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""})
  nice = ["nice", "-n", "15"] if shutil.which("nice") else []
  r.log(f"\n===== [{r.elapsed():6.1f} s] datagen (background, its output below when it ends)\n")
  with open(r.work / "datagen.log", "w") as log:
    return subprocess.Popen(nice + ["bash", "-c", " && ".join(lines)], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def finish_datagen(r: Runner, proc: subprocess.Popen | None, wait_s: float) -> None:
  if proc is None:
    return
  t0 = time.monotonic()
  rc, timed_out = wait_or_stop(proc, max(wait_s, 0), 5)
  rec = {"status": "timeout" if timed_out else ("ok" if rc == 0 else "failed"), "rc": rc,
         "waited_s": round(time.monotonic() - t0, 1), "at_s": round(r.elapsed(), 1),
         "note": "beside the suite; the phases generate what it did not"}
  r.results["steps"]["datagen"] = rec
  text = (r.work / "datagen.log").read_text(errors="replace")
  r.log(f"\n===== datagen (background): {rec['status']}\n{text[-200_000:]}\n")
  r.save()


def suite_step(r: Runner, budget_s: float) -> None:
  if budget_s <= 0:
    r.skip("suite", "--suite-budget-s 0")
    return
  out = r.out / "device_suite.json"
  cmd = [sys.executable, str(REPO / "bench" / "device_suite.py"), "--out", str(out),
         "--budget-s", str(budget_s),
         "--only", "peak", "bandwidth", "train", "forward", "generate"]
  if r.mode.platform == "cpu":
    cmd.append("--cpu-smoke")
  r.run("suite", cmd, budget_s + SUITE_SLACK_S, min_s=30)
  if out.exists():
    try:
      r.results["suite"] = json.loads(out.read_text())
    except ValueError as e:
      r.results["suite"] = {"error": f"unreadable: {e}"}
  r.save()


def fit_minutes(left_s: float, mode: Mode, wanted: tuple[float, float]) -> tuple[float, float]:
  """Both phases' training minutes in the time left (each phase's overhead, the final probe
  and 15 s kept aside), split in the ratio of `wanted` and at most `wanted`; phase 2's are
  fitted again when it starts (`refit`)."""
  spare = left_s - 2 * mode.overhead_s - mode.final_probe_s - 15
  total = sum(wanted)
  return tuple(round(max(min(w, spare * w / total / 60), 0.0), 2) for w in wanted)


def phase_step(r: Runner, k: int, minutes: float) -> None:
  name = f"phase{k}"
  if minutes < r.mode.min_minutes:
    r.skip(name, f"{minutes:.2f} training minutes left")
    return
  args = phase_args(r, k) + [f"--config.train.max_minutes={minutes}"]
  note = f"{minutes} training minutes" + (
      "; from phase 1's checkpoints" if any("init.ckpt" in a for a in args) else
      ("; phase 1 left no checkpoint: from random weights" if k == 2 else ""))
  r.results["phases"][name] = {"minutes": minutes, "args": args}
  r.run(name, [sys.executable, "-m", "bird_jax_demo.base"] + args,
        60 * minutes + r.mode.overhead_s + 60, min_s=30, note=note, cache=True)
  export_if_missing(r, k)
  collect(r)


def export_if_missing(r: Runner, k: int) -> None:
  run = phase_dir(r, k)
  if (run / "base" / "model.safetensors").exists() or not has_checkpoint(run):
    return
  code = ("import sys; from pathlib import Path; from bird_jax_demo.base import export, "
          "plot_probe; run = Path(sys.argv[1]); plot_probe(run / 'train'); "
          "export(run / 'train', run / 'base')")
  r.run(f"phase{k}_export", [sys.executable, "-c", code, str(run)], 120, min_s=10, cache=True)


def final_probe_step(r: Runner) -> None:
  # phase 2 first: its checkpoint is the exported base
  runs = [str(phase_dir(r, k)) for k in (2, 1) if has_checkpoint(phase_dir(r, k))]
  if not runs:
    r.skip("final_probe", "no checkpoint")
    return
  r.run("final_probe", [sys.executable, __file__, "--final-probe", *runs],
        r.mode.final_probe_s * len(runs), min_s=15, cache=True)
  collect(r)


# ---- the probe on a run's last checkpoint (child process) --------------------------------------

def final_probe(run: Path) -> dict[str, Any] | None:
  """The grounding probe (the run's own settings) on its last checkpoint, where the run's last
  probe is older; writes RUN/final_probe.json."""
  from bird_jax.pretrained import checkpoint_step, load_pretrained
  from bird_jax.train.logger import read_metrics
  from bird_jax_demo.base import FOLDERS, GroundingProbe

  step = checkpoint_step(run / "train")
  probed = [r["step"] for r in read_metrics(str(run / "train")) if "probe_recall" in r]
  if step is None or (probed and max(probed) >= step):
    print(f"{run}: step {step} already probed", flush=True)
    return None
  p = json.loads((run / "train" / "config.json").read_text())["base"]["probe"]
  probe = GroundingProbe(run / "data" / FOLDERS["probe"], p["questions"], p["min_objects"],
                         p["batch_size"])
  t0 = time.perf_counter()
  row = {"step": step, **probe(step, load_pretrained(run / "train").model)}
  row["seconds"] = round(time.perf_counter() - t0, 1)
  atomic_write(run / "final_probe.json", json.dumps(row))
  print(f"{run}: {json.dumps(row)}", flush=True)
  return row


def final_probes(runs: list[Path]) -> int:
  """final_probe on each run, the next one also after a failure; 1 if any failed."""
  failed = 0
  for run in runs:
    try:
      final_probe(run)
    except Exception:
      traceback.print_exc()
      failed = 1
  return failed


# ---- the output folder --------------------------------------------------------------------------

def read_rows(path: Path) -> list[dict[str, Any]]:
  if not path.exists():
    return []
  rows = []
  for line in path.read_text(errors="replace").splitlines():
    try:
      rows.append(json.loads(line))
    except ValueError:
      continue  # a line cut by a kill
  return rows


def phase_rows(r: Runner, k: int) -> list[dict[str, Any]]:
  run = phase_dir(r, k)
  rows = [{**row, "phase": k} for row in read_rows(run / "train" / "metrics.jsonl")]
  final = run / "final_probe.json"
  if final.exists():
    rows.append({**json.loads(final.read_text()), "phase": k, "final_probe": True})
  return rows


def phase_summary(rows: list[dict[str, Any]], run: Path) -> dict[str, Any]:
  train = [x for x in rows if "loss" in x]
  probes = [x for x in rows if "probe_recall" in x]
  s: dict[str, Any] = {"last_checkpoint": last_checkpoint(run), "logged_steps": len(train),
                       "probes": len(probes),
                       "exported": (run / "base" / "model.safetensors").exists()}
  if train:
    times = sorted(x["step_time"] for x in train[1:] or train)
    s.update(last_logged_step=train[-1]["step"], last_loss=train[-1]["loss"],
             last_accuracy=train[-1].get("accuracy"), median_step_s=times[len(times) // 2],
             median_tokens_per_s=sorted(x["tokens_per_s"] for x in train)[len(train) // 2])
  if len(train) > 2:  # the wall-clock rate, checkpoints and probes included
    a, b = train[1], train[-1]
    s["steps_per_s_wall"] = (b["step"] - a["step"]) / max(b["time"] - a["time"], 1e-9)
  if probes:
    s["probe"] = [{k: x.get(k) for k in ("step", "probe_recall", "probe_centre_error",
                                         "probe_unreadable", "final_probe")} for x in probes]
  return s


def collect(r: Runner) -> None:
  """metrics.jsonl, probe_curve.png and base.tar.gz from what the phases left so far."""
  rows = []
  for k in (1, 2):
    got = phase_rows(r, k)
    if got or phase_dir(r, k).exists():
      r.results["phases"].setdefault(f"phase{k}", {}).update(
          phase_summary(got, phase_dir(r, k)))
    rows += got
  if rows:
    atomic_write(r.out / "metrics.jsonl", "".join(json.dumps(x) + "\n" for x in rows))
  for what, fn in (("plot", lambda: plot(rows, r.out / "probe_curve.png")),
                   ("base", lambda: pack_base(r))):
    try:
      fn()
    except Exception as e:  # a missing plot or archive is recorded, the run goes on
      r.results.setdefault("collect_errors", {})[what] = f"{type(e).__name__}: {e}"[:300]
  r.save()


def pack_base(r: Runner) -> None:
  for k in (2, 1):
    base = phase_dir(r, k) / "base"
    if (base / "model.safetensors").exists():
      tmp = r.out / ".base.tar.gz.tmp"
      with tarfile.open(tmp, "w:gz") as tar:
        tar.add(base, arcname=f"base_phase{k}")
      os.replace(tmp, r.out / "base.tar.gz")
      r.results["base"] = {"phase": k, "files": sorted(p.name for p in base.iterdir()),
                           "bytes": (r.out / "base.tar.gz").stat().st_size}
      return


def plot(rows: list[dict[str, Any]], path: Path) -> None:
  """Loss, probe R@0.5 and the probe's median centre error against the step, phase 2's
  steps after phase 1's."""
  if not rows:
    return
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
  offset = 0
  for k, colour in ((1, "tab:blue"), (2, "tab:orange")):
    mine = [x for x in rows if x["phase"] == k]
    for ax, key in zip(axes, ("loss", "probe_recall", "probe_centre_error")):
      pts = [(x["step"] + offset, x[key]) for x in mine if key in x and x[key] is not None]
      if pts:
        ax.plot(*zip(*pts), marker=".", color=colour, label=f"phase {k}")
    offset += max((x["step"] for x in mine), default=0)
  for ax, title in zip(axes, ("training loss", "probe R@0.5 (held-out scenes)",
                              "probe median centre error (0..1000 grid)")):
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step (phase 2 after phase 1)")
    if ax.lines:
      ax.legend(fontsize=8)
  axes[1].set_ylim(0, 1)
  fig.tight_layout()
  tmp = path.with_name(f".{path.name}.tmp.png")
  fig.savefig(tmp, dpi=100)
  plt.close(fig)
  os.replace(tmp, path)


# ---- summary.md --------------------------------------------------------------------------------

def flat(prefix: str, value: Any) -> list[tuple[str, Any]]:
  if isinstance(value, dict):
    return [kv for k, v in value.items() for kv in flat(f"{prefix}.{k}" if prefix else k, v)]
  return [(prefix, value)]


def fmt(v: Any) -> str:
  return f"{v:.4g}" if isinstance(v, float) else str(v)


def summary(res: dict[str, Any]) -> str:
  meta = res["meta"]
  lines = [f"# First GPU run ({meta['mode']} mode)", "",
           f"started {meta['started']}, {meta['wall_s']} s so far (bound {meta['deadline_s']} s), "
           f"Python {meta['python']} ({meta['executable']})", "",
           "| step | status | seconds | bound (s) | note |", "|---|---|---|---|---|"]
  for name, s in res["steps"].items():
    lines.append(f"| {name} | {s['status']} | {s.get('seconds', s.get('waited_s', ''))} | "
                 f"{s.get('bound_s', '')} | {s.get('note', '')} |")
  lines += env_lines(res["env"]) + suite_lines(res["suite"]) + phase_lines(res["phases"])
  if res.get("base"):
    lines += ["", f"base.tar.gz: phase {res['base']['phase']}'s export "
                  f"({res['base']['bytes']} bytes): {', '.join(res['base']['files'])}"]
  if res.get("collect_errors"):
    lines += ["", f"collect errors: {json.dumps(res['collect_errors'])}"]
  return "\n".join(lines) + "\n"


def env_lines(env: dict[str, Any]) -> list[str]:
  if not env:
    return []
  lines = ["", "## Environment", "", f"- JAX: {json.dumps(env.get('jax'))}",
           f"- missing here: {env.get('missing')}; package set used: {env.get('packages')}"]
  for name, report in env.get("checks", {}).items():
    fails = {k: v.get("error") for k, v in report.items() if isinstance(v, dict)
             and v.get("ok") is False}
    lines.append(f"- check with the {name} packages: {'passed' if report.get('ok') else fails}")
    for dist, v in (report.get("versions") or {}).items():
      lines.append(f"  - {dist} {v.get('version')} from {v.get('from')}")
  return lines


def suite_lines(suite: dict[str, Any]) -> list[str]:
  if not suite.get("results"):
    return []
  meta = suite.get("meta", {})
  lines = ["", "## Device suite (device_suite.json)", "",
           f"{meta.get('device')}, JAX {meta.get('jax')}, {fmt(meta.get('wall_s'))} s", "",
           "| section | figure | value |", "|---|---|---|"]
  for name, sec in suite["results"].items():
    lines += [f"| {name} | {k} | {fmt(v)} |" for k, v in flat("", sec)]
  return lines


def phase_lines(phases: dict[str, Any]) -> list[str]:
  lines = []
  for name, p in phases.items():
    lines += ["", f"## {name}", ""]
    lines += [f"- {k}: {fmt(v)}" for k, v in p.items() if k not in ("probe", "args")]
    if p.get("probe"):
      lines += ["", "| step | R@0.5 | median centre error | unreadable | on the last checkpoint |",
                "|---|---|---|---|---|"]
      lines += [f"| {x['step']} | {fmt(x['probe_recall'])} | {fmt(x['probe_centre_error'])} | "
                f"{fmt(x['probe_unreadable'])} | {'yes' if x.get('final_probe') else ''} |"
                for x in p["probe"]]
  return lines


# ---- the wheels carried to the GPU machine ------------------------------------------------------

def prepare_wheels(python_version: str) -> None:
  """Downloads, for the GPU machine's Python, the wheels of this environment's versions of the
  packages that machine lacks (missing/) and of the project's pinned flax/optax/orbax
  (pinned/), replacing older ones."""
  import importlib.metadata as md

  for folder, dists in (("missing", list(MISSING_DISTS.values())), ("pinned", PINNED_DISTS)):
    dest = WHEELS / folder
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
      old.unlink()
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", python_version, "--implementation", "cp", "-d", str(dest)]
    cmd += [x for p in DEVICE_PLATFORMS for x in ("--platform", p)]
    subprocess.run(cmd + [f"{d}=={md.version(d)}" for d in dists], check=True)
  for w in sorted(WHEELS.glob("*/*.whl")):
    print(f"{w.stat().st_size / 2**20:6.2f} MiB  {w.relative_to(REPO)}")
  total = sum(w.stat().st_size for w in WHEELS.glob("*/*.whl"))
  print(f"{total / 2**20:6.2f} MiB in all")


# ---- driver ------------------------------------------------------------------------------------

def run_all(mode: Mode, out: Path, work: Path, minutes: tuple[float, float],
            deadline_s: float, suite_budget_s: float, packages: str = "auto") -> Runner:
  out.mkdir(parents=True, exist_ok=True)
  for k in (1, 2):
    shutil.rmtree(work / f"phase{k}", ignore_errors=True)
  work.mkdir(parents=True, exist_ok=True)
  r = Runner(mode, out, work, deadline_s)
  r.packages = packages
  r.log(f"first GPU run, {mode.name} mode, {now_iso()}, out {out}, work {work}\n")
  guarded(r, "env", lambda: env_steps(r))
  datagen = guarded(r, "datagen_start", lambda: start_datagen(r))
  guarded(r, "suite", lambda: suite_step(r, suite_budget_s))
  guarded(r, "datagen", lambda: finish_datagen(r, datagen, min(mode.datagen_wait_s,
                                                               r.left() / 4)))
  fitted = fit_minutes(r.left(), mode, minutes)
  r.results["meta"]["minutes"] = {"wanted": minutes, "fitted at phase 1": fitted}
  guarded(r, "phase1", lambda: phase_step(r, 1, fitted[0]))
  guarded(r, "phase2", lambda: phase_step(r, 2, refit(r, mode, minutes[1])))
  guarded(r, "final_probe", lambda: final_probe_step(r))
  guarded(r, "collect", lambda: collect(r))
  r.log(f"\n===== done after {r.elapsed():.1f} s\n")
  return r


def guarded(r: Runner, name: str, fn):
  """fn(), or None after recording its exception: a fault of this script stops no later step."""
  try:
    return fn()
  except Exception as e:
    r.results["steps"][f"{name} (driver)"] = {"status": "error",
                                              "note": f"{type(e).__name__}: {e}"[:300]}
    r.log(f"\n===== {name}: the driver failed: {type(e).__name__}: {e}\n")
    r.save()
    return None


def refit(r: Runner, mode: Mode, wanted: float) -> float:
  """Phase 2's minutes in the time left now (phase 1 may have ended early or late)."""
  spare = r.left() - mode.overhead_s - mode.final_probe_s - 15
  return round(max(min(wanted, spare / 60), 0.0), 2)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--tiny", action="store_true", default=os.environ.get("FIRST_GPU_TINY") == "1",
                  help="tiny sizes on the CPU (also FIRST_GPU_TINY=1)")
  ap.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "runs/first_gpu/out"))
  ap.add_argument("--work", default=str(REPO / "runs/first_gpu/work"),
                  help="the phases' runs and the installed wheels (phase folders start afresh)")
  ap.add_argument("--minutes", type=float, nargs=2, default=None,
                  help="the phases' training minutes at most, fitted to the time left "
                  "(default: 1.0 1.5 on the GPU, 3.0 0.02 tiny)")
  ap.add_argument("--deadline-s", type=float, default=None,
                  help="the whole run's bound (default: 525 on the GPU, 1500 tiny)")
  ap.add_argument("--suite-budget-s", type=float, default=None,
                  help="device_suite.py's --budget-s (default: 110 on the GPU, 450 tiny; 0 skips "
                  "the suite)")
  ap.add_argument("--packages", choices=("auto", "pinned", "machine"), default="auto",
                  help="flax/optax/orbax: the carried pinned ones, the machine's, or the first "
                  "set that passes bench/env_check.py (auto)")
  ap.add_argument("--prepare-wheels", action="store_true",
                  help="download .device_wheels/ for the GPU machine, then stop")
  ap.add_argument("--device-python", default="3.12", help="the GPU machine's Python version")
  ap.add_argument("--final-probe", nargs="+", default=None, help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.prepare_wheels:
    prepare_wheels(args.device_python)
    return
  if args.final_probe:
    sys.exit(final_probes([Path(run) for run in args.final_probe]))
  mode = MODES["tiny" if args.tiny else "gpu"]
  r = run_all(mode, Path(args.out).resolve(), Path(args.work).resolve(),
              tuple(args.minutes or mode.minutes), args.deadline_s or mode.deadline_s,
              mode.suite_budget_s if args.suite_budget_s is None else args.suite_budget_s,
              args.packages)
  print((r.out / "summary.md").read_text())


if __name__ == "__main__":
  main()
