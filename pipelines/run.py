"""``run_pipeline``: a config to a trained, evaluated, registered model, on Ray.

Stages, in order (each timed against the config's budget):

1. **train**: one Ray task per zoo shard (:func:`pipelines.tasks.train_shard`: the shared
   ``training_zoo.shard.run_shard`` + ``ZooStore.write_shard``). Shards that the store already
   holds complete (:meth:`ZooStore.complete_shards`, the same rule as
   ``python -m training_zoo run --resume``) are skipped on ``resume``. Tasks ask for a
   fraction of a GPU only when the cluster has GPUs (a GPU request on a CPU-only cluster would
   wait forever), else CPUs; failed tasks are retried (``max_retries``, worker deaths and
   exceptions alike); a shard that fails for good is reported by id and the rest finish.
2. **features**: one task per stored shard writes ``features/<shard>`` into the store
   (:mod:`rulefinder.store.features`); complete groups with the same settings are skipped.
3. **fit**, 4. **evaluate**, 5. **register**: :mod:`pipelines.stages` (the estimator,
   evaluation and model registry of :mod:`rulefinder.classify`).

A summary (per-stage seconds, budgets, failed shards, where shards ran) is printed and
written to ``<out>/summary.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from pipelines.config import STAGES, PipelineConfig, load_config

log = logging.getLogger(__name__)


class PipelineError(RuntimeError):
    """A run that cannot start or continue; the message says why and what to do."""


@dataclass
class StageReport:
    name: str
    budget_s: float
    seconds: float = 0.0
    cpu_s: float = 0.0  # the driver's CPU in the stage plus what its workers reported (``worker_cpu_s``)
    status: str = "pending"  # done | partial (some shards failed for good) | failed | skipped | not run
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def over_budget(self) -> bool:
        return self.seconds > self.budget_s

    def as_dict(self) -> dict:
        return {"seconds": round(self.seconds, 3), "cpu_s": round(self.cpu_s, 3), "budget_s": self.budget_s,
                "status": self.status,
                "over_budget": self.over_budget, **self.detail}


def _wait_all(refs: dict, bar: tqdm, weight: dict, what: str) -> tuple[list[dict], dict[str, str]]:
    """Collect task results as they finish; a task that failed for good is recorded by id."""
    import ray

    results, failed = [], {}
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        for ref in ready:
            key = refs[ref]
            try:
                res = ray.get(ref)
            except (ray.exceptions.RayError, Exception) as exc:  # retries exhausted
                msg = str(exc).strip().splitlines()
                failed[key] = msg[-1] if msg else type(exc).__name__
                log.error("%s %s failed for good: %s", what, key, failed[key])
                bar.write(f"{what} {key} FAILED: {failed[key]}")
            else:
                results.append(res)
            bar.update(weight.get(key, 1))
    return results, failed


class Pipeline:
    """One run of a config. ``run()`` returns the summary dict."""

    def __init__(
        self,
        config: PipelineConfig | str | Path | dict,
        *,
        address: str | None = None,
        store: str | None = None,
        out: str | Path | None = None,
        resume: bool = False,
        name: str | None = None,
        replace: bool = False,
        storage_options: dict | None = None,
        num_cpus: int | None = None,
        progress: bool | None = None,
        until: str = "register",
    ) -> None:
        self.config = config if isinstance(config, PipelineConfig) else load_config(config)
        self.address = address
        self.out = Path(out) if out is not None else Path("runs") / self.config.name
        self.store_url = str(store) if store else str(self.out / "store.zarr")
        if "://" not in self.store_url:  # every worker, whatever its working directory, finds it
            self.store_url = str(Path(self.store_url).resolve())
        self.resume = resume
        self.name = name or self.config.model_name()
        self.replace = replace
        self.storage_options = storage_options
        self.num_cpus = num_cpus
        self.progress = sys.stderr.isatty() if progress is None else progress
        if until not in STAGES:
            raise PipelineError(f"until is {until!r}: expected one of {', '.join(STAGES)}")
        self.until = until
        self.stages = {s: StageReport(s, getattr(self.config, s).budget_s) for s in
                       ("train", "features", "fit", "evaluate", "register")}
        self.cluster = None
        self.shards: list = []
        self.failed: dict[str, str] = {}
        self.nodes: dict[str, int] = {}

    # ------------------------------------------------------------------ train
    def _train(self) -> None:
        import ray

        from rulefinder.store import ZooStore
        from training_zoo.spec import expand_spec

        rep = self.stages["train"]
        cfg = self.config.train
        self.shards = expand_spec(self.config.zoo_spec())
        store = ZooStore.create(self.store_url, exist_ok=True, storage_options=self.storage_options)
        existing = store.shard_ids()
        if existing and not self.resume:
            raise PipelineError(
                f"{self.store_url}: the store already holds {len(existing)} shard(s); "
                "pass --resume to continue that run, or another --store/--out"
            )
        done = store.complete_shards() if self.resume else set()
        todo = interleave_rules([s for s in self.shards if s.shard_id not in done])
        use_gpu = cfg.device == "cuda" or (cfg.device == "auto" and self.cluster.gpus > 0)
        if cfg.device == "cuda" and self.cluster.gpus == 0:
            raise PipelineError("train.device is cuda but the cluster has no GPUs")
        resources = ({"num_gpus": cfg.gpus_per_task, "num_cpus": cfg.cpus_per_task} if use_gpu
                     else {"num_cpus": cfg.cpus_per_task})
        device = "cuda" if use_gpu else "cpu"
        remote = ray.remote(_train_task).options(
            max_retries=cfg.max_retries, retry_exceptions=True, **resources
        )
        total = sum(s.n_networks for s in self.shards)
        skipped = sum(s.n_networks for s in self.shards if s.shard_id in done)
        refs = {
            remote.remote(s.to_dict(), self.store_url, storage_options=self.storage_options,
                          device=device, threads=cfg.threads_per_task): s.shard_id
            for s in todo
        }
        weight = {s.shard_id: s.n_networks for s in todo}
        with tqdm(total=total, initial=skipped, desc=f"train {self.config.name}", unit="net",
                  disable=not self.progress, file=sys.stderr) as bar:
            results, failed = _wait_all(refs, bar, weight, "shard")
        self.failed.update(failed)
        for r in results:
            self.nodes[r["node_id"] or r["host"]] = self.nodes.get(r["node_id"] or r["host"], 0) + 1
        store.refresh().consolidate()
        rep.detail = {
            "shards": len(self.shards), "shards_run": len(results), "shards_skipped": len(self.shards) - len(todo),
            "shards_failed": sorted(failed), "networks": total,
            "networks_trained": sum(r["networks"] for r in results),
            "diverged": sum(r["diverged"] for r in results), "device": device,
            "task_seconds": round(sum(r["seconds"] for r in results), 3),
            "worker_cpu_s": round(sum(r.get("cpu_s", 0.0) for r in results), 3),
        }
        rep.status = "done" if not failed else "partial"  # the rest finished; failures by id in `failed`

    # --------------------------------------------------------------- features
    def _features(self) -> None:
        import ray

        from rulefinder.store import ZooStore
        from rulefinder.store.features import complete_features, ensure_features_group

        rep = self.stages["features"]
        cfg = self.config.features
        fingerprint = self.config.fingerprint("features")
        store = ZooStore.open(self.store_url, storage_options=self.storage_options)
        stored = store.complete_shards()
        wanted = [s.shard_id for s in self.shards if s.shard_id in stored]
        done = complete_features(self.store_url, fingerprint, storage_options=self.storage_options)
        todo = [k for k in wanted if k not in done]
        ensure_features_group(self.store_url, storage_options=self.storage_options)
        session = uuid.uuid4().hex  # workers keep their opened store for this stage only
        settings = cfg.model_dump(mode="json", exclude={"budget_s", "shards_per_task"})
        remote = ray.remote(_features_task).options(
            max_retries=self.config.train.max_retries, retry_exceptions=True, num_cpus=1
        )
        # Several shards per task (each still its own group): a few tasks per CPU keep every
        # worker busy while opening the store once per task, not once per shard.
        per_task = max(1, min(cfg.shards_per_task, -(-len(todo) // max(1, int(4 * self.cluster.cpus)))))
        batches = [todo[i:i + per_task] for i in range(0, len(todo), per_task)]
        refs = {remote.remote(batch, self.store_url, settings, fingerprint,
                              estimator_params=self.config.fit.params,
                              storage_options=self.storage_options, session=session,
                              threads=self.config.train.threads_per_task): ",".join(batch) for batch in batches}
        weight = {",".join(b): len(b) for b in batches}
        with tqdm(total=len(wanted), initial=len(wanted) - len(todo), desc="features", unit="shard",
                  disable=not self.progress, file=sys.stderr) as bar:
            batch_results, failed = _wait_all(refs, bar, weight, "features of shards")
        results = [r for batch in batch_results for r in batch]
        self.failed.update({f"features:{k}": v for k, v in failed.items()})
        rep.detail = {
            "shards": len(wanted), "shards_run": len(results), "shards_skipped": len(wanted) - len(todo),
            "shards_failed": sorted(failed), "samples": sum(r["samples"] for r in results),
            "recordings": sum(r["recordings"] for r in results),
            "task_seconds": round(sum(r["seconds"] for r in results), 3),
            "worker_cpu_s": round(sum(r.get("cpu_s", 0.0) for r in results), 3),
        }
        rep.status = "done" if not failed else "partial"  # the rest finished; failures by id in `failed`

    # ------------------------------------------------------------------- run
    def _timed(self, name: str, fn) -> None:
        rep = self.stages[name]
        t0, c0 = time.perf_counter(), _process_cpu()
        try:
            fn()
        finally:
            rep.seconds = time.perf_counter() - t0
            rep.cpu_s = _process_cpu() - c0 + float(rep.detail.get("worker_cpu_s", 0.0))
            if rep.status == "pending":
                rep.status = "failed"
            if rep.over_budget:
                log.warning("stage %s took %.1f s, over its budget of %.1f s", name, rep.seconds, rep.budget_s)

    def run(self) -> dict:
        from pipelines import stages
        from pipelines.cluster import connect, disconnect

        t0 = time.perf_counter()
        if self.config.register.enabled and self.until == "register":
            try:
                stages.check_name(self.name, self.replace)
            except ValueError as exc:
                raise PipelineError(str(exc)) from None
        self.out.mkdir(parents=True, exist_ok=True)
        wanted = STAGES[: STAGES.index(self.until) + 1]
        # Ray prints its own notices (a worker died, a task is retried) on stdout; they belong
        # with the logs on stderr, so that stdout carries only the summary (``--json``).
        with contextlib.redirect_stdout(sys.stderr):
            connect_t0 = time.perf_counter()
            self.cluster = connect(self.address, self.num_cpus)
            connect_s = time.perf_counter() - connect_t0
            try:
                self._timed("train", self._train)
                if "features" in wanted:
                    self._timed("features", self._features)
                else:
                    self.stages["features"].status = "skipped"
            finally:
                disconnect()
        ctx = stages.StageContext(
            config=self.config, store_url=self.store_url, storage_options=self.storage_options,
            out=self.out, name=self.name, replace=self.replace, progress=self.progress,
        )
        broken = None
        for name, fn in (("fit", stages.fit), ("evaluate", stages.evaluate), ("register", stages.register)):
            rep = self.stages[name]
            if name not in wanted or (name != "fit" and not getattr(self.config, name).enabled):
                rep.status = "skipped"
                continue
            if broken is not None or (name == "fit" and not self._has_features()):
                rep.status = "not run"
                rep.detail = {"reason": f"stage {broken} failed" if broken else "no features were stored"}
                continue

            def call(fn=fn, rep=rep):
                rep.detail = fn(ctx)
                rep.status = "done"

            try:
                self._timed(name, call)
            except Exception as exc:  # reported in the summary; the later stages need this one
                log.exception("stage %s failed", name)
                rep.detail = {"error": f"{type(exc).__name__}: {exc}"}
                broken = name
        summary = self.summary(time.perf_counter() - t0, connect_s)
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        return summary

    def _has_features(self) -> bool:
        return self.stages["features"].detail.get("shards", 0) > 0

    def summary(self, wall_s: float, connect_s: float) -> dict:
        return {
            "config": self.config.name,
            "model": self.name,
            "store": self.store_url,
            "out": str(self.out),
            "cluster": self.cluster.as_dict() if self.cluster else None,
            "ray_start_s": round(connect_s, 3),
            "wall_s": round(wall_s, 3),
            "networks": self.stages["train"].detail.get("networks", 0),
            "stages": {k: v.as_dict() for k, v in self.stages.items()},
            "failed": self.failed,
            "shards_per_node": self.nodes,
        }


def _process_cpu() -> float:
    """CPU seconds of this process so far (all its threads, user + system)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def interleave_rules(shards: list) -> list:
    """The shards round-robin over rules (each rule's own order kept): a run stopped early, or
    a store grown over several ``--resume`` runs, holds every rule in like measure."""
    by_rule: dict[str, list] = {}
    for s in shards:
        by_rule.setdefault(s.rule, []).append(s)
    queues = list(by_rule.values())
    out = []
    for i in range(max((len(q) for q in queues), default=0)):
        out += [q[i] for q in queues if i < len(q)]
    return out


# Module-level functions (not closures), so Ray pickles them by reference.
def _train_task(*args, **kwargs):
    from pipelines.tasks import train_shard

    return train_shard(*args, **kwargs)


def _features_task(*args, **kwargs):
    from pipelines.tasks import features_batch

    return features_batch(*args, **kwargs)


def run_pipeline(config, **kwargs) -> dict:
    """Run ``config`` (a shipped name, a YAML path, a dict or a :class:`PipelineConfig`)."""
    return Pipeline(config, **kwargs).run()


def format_summary(summary: dict) -> str:
    """The per-stage timing table printed at the end of a run."""
    lines = [f"pipeline {summary['config']}: model {summary['model']}, {summary['networks']} networks, "
             f"{summary['wall_s']:.1f} s (Ray start {summary['ray_start_s']:.1f} s)"]
    lines.append(f"{'stage':<10} {'status':<8} {'seconds':>9} {'CPU s':>9} {'budget':>9}")
    for name, st in summary["stages"].items():
        flag = "  OVER BUDGET" if st["over_budget"] and st["status"] != "skipped" else ""
        lines.append(f"{name:<10} {st['status']:<8} {st['seconds']:>9.1f} {st.get('cpu_s', 0.0):>9.1f} "
                     f"{st['budget_s']:>9.0f}{flag}")
    if summary["failed"]:
        lines.append("failed for good: " + ", ".join(sorted(summary["failed"])))
    return "\n".join(lines)
