"""Which runs a report covers, and which of them form one row (docs/metrics.md, "Statistics contract").

- A run is a configuration's seed when it is FINISHED with a `test/dice` metric; others are listed,
  never averaged. A sweep's parent run (`segsweep.parent = true`) is never a configuration.
- Default scope: per experiment, the latest sweep that holds a run that is not a smoke run (smoke:
  `trainer.limit_train_batches` set, or any `debug.*` set); smoke runs are left out unless asked for
  (`include_smoke`). `--sweep-id` picks one sweep, `--all-sweeps` every run.
- One row (a `Config`) = model x loss x result-defining settings: the flattened resolved config that
  seg.train logs as MLflow params, less the keys `config_hash` leaves out (HASH_EXCLUDED) and less
  the seed. Runs of one model x loss whose settings differ become separate rows, each labelled with
  every differing key in full.
- Cross-validation (README "Cross-validation"): a run's fold (tag `cv_fold`) is a replicate like its
  seed: not a setting; the folds of one configuration are averaged like seeds (`Config.is_cv`).
- Selection by validation only: `reference_config` is the configuration with the best mean
  `best/<monitor>` over its seeds (and folds); `best_by_validation` picks a run for `seg.predict best:` the same way.
"""
from __future__ import annotations

import math
import tempfile
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from seg import tracking
from seg.config import HASH_EXCLUDED, TRAINER_HASH_EXCLUDED

PARENT_TAG = getattr(tracking, "PARENT_TAG", "segsweep.parent")  # "true" on a sweep's parent run
NO_SWEEP = "none"                      # sweep_id of a single (non-multirun) run
MODEL_ORDER = ("unet", "resunet", "transunet")
LOSS_ORDER = ("bce", "focal", "dice", "bce_dice", "dice_focal", "wce")
DEFAULT_MONITOR = "val/dice"


class ReportError(Exception):
    """Something the user has to fix (no store, no runs, a filter matching nothing): printed, no traceback."""


def _finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _is_set(value) -> bool:
    """An MLflow param value that is set (MLflow logs None as the string 'None')."""
    return value is not None and str(value).strip().lower() not in ("", "none", "null")


def seed_key(seed: str):
    return (0, int(seed), "") if str(seed).lstrip("-").isdigit() else (1, 0, str(seed))


def rank(value: str, preferred: Sequence[str]) -> tuple:
    return (preferred.index(value), "") if value in preferred else (len(preferred), value)


def order(values: Sequence[str], preferred: Sequence[str]) -> list[str]:
    known = [v for v in preferred if v in values]
    return known + sorted(v for v in set(values) if v not in preferred)


@dataclass
class Run:
    run_id: str
    name: str
    task: str
    status: str
    tags: dict
    metrics: dict
    params: dict
    start_ms: int | None
    end_ms: int | None
    artifact_uri: str = ""

    @property
    def model(self) -> str:
        return self.tags.get("model") or self.params.get("model.name", "?")

    @property
    def loss(self) -> str:
        return self.tags.get("loss") or self.params.get("loss.name", "?")

    @property
    def seed(self) -> str:
        return self.tags.get("seed") or self.params.get("seed", "?")

    @property
    def fold(self) -> str | None:
        """The cross-validation fold of the run ("0", "1", ...), None when it ran without CV."""
        value = self.tags.get("cv_fold") or self.params.get("cv.fold")
        return str(value) if _is_set(value) and _is_set(self.tags.get("cv_folds") or self.params.get("cv.folds")) \
            else None

    @property
    def replicate(self) -> tuple:
        """What sets apart the runs of one configuration: (seed, fold) (fold "" without CV)."""
        return seed_key(self.seed), seed_key(self.fold) if self.fold is not None else (-1, 0, "")

    @property
    def config(self) -> tuple[str, str]:
        return self.model, self.loss

    @property
    def sweep_id(self) -> str:
        return self.tags.get("sweep_id", NO_SWEEP)

    @property
    def included(self) -> bool:
        return self.status == "FINISHED" and _finite(self.metrics.get("test/dice"))

    @property
    def smoke(self) -> str:
        """Why this is a smoke run ('' when it is not): trainer.limit_train_batches or a debug.* key set."""
        found = [f"trainer.limit_train_batches={self.params['trainer.limit_train_batches']}"] \
            if _is_set(self.params.get("trainer.limit_train_batches")) else []
        found += [f"{k}={v}" for k, v in sorted(self.params.items()) if k.startswith("debug.") and _is_set(v)]
        return ", ".join(found)

    @property
    def settings(self) -> dict[str, str]:
        """The result-defining settings: MLflow params less HASH_EXCLUDED's top-level keys, TRAINER_HASH_EXCLUDED's
        trainer keys and the seed, the machine's paths replaced as config_hash replaces them."""
        swaps = [(self.params[k], f"<path{i}>") for i, k in enumerate(("paths.cache", "paths.root"))
                 if _is_set(self.params.get(k))]
        out = {}
        for key, value in self.params.items():   # the seed and the CV fold: replicates of one configuration
            if key in ("seed", "cv.fold") or key.split(".", 1)[0] in HASH_EXCLUDED \
                    or key in {f"trainer.{k}" for k in TRAINER_HASH_EXCLUDED}:
                continue
            text = str(value)
            for path, token in swaps:
                text = text.replace(path, token)
            out[key] = text
        return out

    @property
    def why_excluded(self) -> str:
        reason = self.tags.get("failure_reason", "")
        if self.status == "RUNNING":
            return "still running, or its process died without ending the run"
        if self.status != "FINISHED":
            return reason or f"ended {self.status} without a failure_reason tag"
        return "FINISHED without a test/dice metric"


def to_run(run, task: str) -> Run:
    metrics = dict(run.data.metrics)
    if run.info.start_time and run.info.end_time:
        metrics["run/duration_s"] = (run.info.end_time - run.info.start_time) / 1000.0
    return Run(run.info.run_id, run.info.run_name or run.data.tags.get("mlflow.runName", run.info.run_id),
               task, run.info.status, dict(run.data.tags), metrics, dict(run.data.params),
               run.info.start_time, run.info.end_time, run.info.artifact_uri or "")


# ----------------------------------------------------------------------------------------------------
# artifacts

def local_artifacts(run: Run) -> Path | None:
    """The run's artifact directory when the artifact store is the local file system (read in place)."""
    parsed = urllib.parse.urlparse(run.artifact_uri)
    if parsed.scheme == "file" or (parsed.scheme == "" and run.artifact_uri):
        path = Path(urllib.request.url2pathname(parsed.path))
        return path if path.is_dir() else None
    return None


def fetch_artifact(client, run: Run, rel: str, tmp: Path) -> str:
    """Local path of one artifact file: in place on a local store, else downloaded through MLflow into tmp."""
    local = local_artifacts(run)
    if local is not None and (local / rel).is_file():
        return str(local / rel)
    dst = tmp / run.run_id
    dst.mkdir(parents=True, exist_ok=True)
    return client.download_artifacts(run.run_id, rel, str(dst))


def list_artifact_files(client, run: Run, folder: str) -> list[str]:
    """Relative paths of the files in one artifact folder."""
    local = local_artifacts(run)
    if local is not None:
        return sorted(f"{folder}/{p.name}" for p in (local / folder).glob("*") if p.is_file())
    return [f.path for f in client.list_artifacts(run.run_id, folder) if not f.is_dir]


def open_store(uri: str):
    """An MlflowClient on `uri`; a sqlite store must exist already (the report never creates one)."""
    path = tracking.sqlite_path(uri)
    if path is not None and not path.is_file():
        raise ReportError(f"no MLflow store at {path}: run a sweep first (`make sweep`), or point "
                          f"--tracking-uri / MLFLOW_TRACKING_URI at the store that holds the runs")
    return tracking.MlflowClient(tracking_uri=uri)


# ----------------------------------------------------------------------------------------------------
# selection

@dataclass
class SweepInfo:
    sweep_id: str
    n_runs: int
    n_configs: int
    smoke: bool            # every run of it is a smoke run


@dataclass
class Selection:
    uri: str
    tasks: dict[str, list[Run]]        # experiment -> selected runs (included or not), smoke runs left out
    scope: dict[str, str]              # experiment -> which runs ("sweep X (the latest)", "all sweeps", ...)
    notes: list[str]
    filters: str
    sweeps: dict[str, list[SweepInfo]] = field(default_factory=dict)   # experiment -> its sweeps, newest first
    chosen_sweep: dict[str, str | None] = field(default_factory=dict)   # experiment -> the sweep reported
    smoke_left_out: dict[str, list[Run]] = field(default_factory=dict)


def describe_filters(experiments: Sequence[str], sweep_id: str | None, tags: dict, all_sweeps: bool,
                     include_smoke: bool = False) -> str:
    parts = [f"experiment={','.join(experiments) if experiments else '(all)'}"]
    parts.append(f"sweep_id={sweep_id}" if sweep_id else "all sweeps" if all_sweeps
                 else "latest sweep per task with a non-smoke run")
    parts += [f"tag {k}={v}" for k, v in tags.items()]
    parts.append("smoke runs included" if include_smoke else "smoke runs left out")
    return ", ".join(parts)


def select_runs(client, uri: str, experiments: Sequence[str] = (), sweep_id: str | None = None,
                tags: dict | None = None, all_sweeps: bool = False, include_smoke: bool = False) -> Selection:
    """The runs the report covers, per experiment (see the module docstring for the default scope)."""
    tags = dict(tags or {})
    available = [e.name for e in client.search_experiments()]
    names = list(dict.fromkeys(experiments)) or sorted(available)
    for name in names:
        if name not in available:
            raise ReportError(f"--experiment {name!r}: no such experiment in {uri}; experiments there: "
                              f"{', '.join(sorted(available)) or 'none'}")
    filters = describe_filters(experiments, sweep_id, tags, all_sweeps, include_smoke)
    sel = Selection(uri, {}, {}, [], filters)
    misses, total = [], 0
    for name in names:
        every = [to_run(r, name) for r in tracking.search_runs(uri, name)]
        total += len(every)
        parents = [r for r in every if r.tags.get(PARENT_TAG, "").lower() == "true"]
        runs = [r for r in every if r.tags.get(PARENT_TAG, "").lower() != "true"]
        runs = [r for r in runs if all(r.tags.get(k) == v for k, v in tags.items())]
        sweeps = _sweeps(runs + parents)   # a re-run that skipped every job has only its parent run
        members = {s: _sweep_members(client, s, runs, parents) for s in sweeps}
        sel.sweeps[name] = [SweepInfo(s, len(m), len({r.config for r in m}), bool(m) and all(r.smoke for r in m))
                            for s, m in members.items()]
        chosen_sweep = None
        if sweep_id:
            chosen_sweep = sweep_id
            chosen, label = members.get(sweep_id) or [r for r in runs if r.sweep_id == sweep_id], f"sweep {sweep_id}"
        elif all_sweeps:
            chosen, label = runs, f"all runs ({len(sweeps)} sweep(s))"
        elif sweeps:
            usable = [s for s in sweeps if include_smoke or any(not r.smoke for r in members[s])]
            chosen_sweep = usable[0] if usable else sweeps[0]
            newer = sweeps[:sweeps.index(chosen_sweep)]
            if newer:
                sel.notes.append(f"{name}: newer sweep(s) {', '.join(newer)} hold only smoke runs and are not the "
                                 f"default; report one with --sweep-id ID --include-smoke")
            chosen = members[chosen_sweep]
            label = f"sweep {chosen_sweep} (the latest{'' if include_smoke else ' with a non-smoke run'})"
        else:
            chosen, label = runs, "single runs (no sweep found)"
        if chosen_sweep:
            extra = [r for r in chosen if r.sweep_id != chosen_sweep]
            if extra:
                sel.notes.append(f"{name}: {len(extra)} run(s) of earlier sweeps included because sweep "
                                 f"{chosen_sweep} skipped them as already FINISHED (resume)")
        smoke = [] if include_smoke else [r for r in chosen if r.smoke]
        if smoke:
            chosen = [r for r in chosen if not r.smoke]
            sel.smoke_left_out[name] = smoke
            sel.notes.append(f"{name}: {len(smoke)} smoke run(s) left out ({smoke[0].smoke}); --include-smoke "
                             f"reports them")
        sel.chosen_sweep[name] = chosen_sweep
        if chosen:
            sel.tasks[name], sel.scope[name] = chosen, label
        else:
            seen = ", ".join(sweeps[:5]) + (" ..." if len(sweeps) > 5 else "")
            what = f" ({len(smoke)} smoke run(s) left out: add --include-smoke)" if smoke else ""
            misses.append(f"{name}: {len(every) - len(parents)} run(s){what}, sweeps: {seen or 'none'}")
    if not sel.tasks:
        if total == 0:
            where = f"experiment {', '.join(names)}" if experiments else "any experiment"
            raise ReportError(f"no runs match: there are no runs in {where} of {uri}; run a sweep first "
                              f"(`make sweep`) or point --tracking-uri / MLFLOW_TRACKING_URI at another store")
        raise ReportError(f"no runs match ({filters}) in {uri}. " + "; ".join(misses))
    sel.notes += [f"no runs match in {m}" for m in misses if experiments]
    return sel


def _sweeps(runs: Sequence[Run]) -> list[str]:
    """Sweep ids of the runs, newest first (by the latest start time of their runs)."""
    latest: dict[str, int] = {}
    for r in runs:
        if r.sweep_id != NO_SWEEP:
            latest[r.sweep_id] = max(latest.get(r.sweep_id, 0), r.start_ms or 0)
    return sorted(latest, key=lambda s: (latest[s], s), reverse=True)


def _sweep_members(client, sweep: str, runs: Sequence[Run], parents: Sequence[Run]) -> list[Run]:
    """The runs of a sweep, and those it skipped as already FINISHED (listed in its parent's children.csv)."""
    chosen = [r for r in runs if r.sweep_id == sweep]
    have = {r.run_id for r in chosen}
    by_id = {r.run_id: r for r in runs}
    for parent in (p for p in parents if p.sweep_id == sweep):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                children = pd.read_csv(fetch_artifact(client, parent, "children.csv", Path(tmp)), dtype=str)
            except Exception:  # a parent still running has no children.csv yet
                continue
        for run_id in children.get("run_id", pd.Series(dtype=str)).dropna():
            if run_id in by_id and run_id not in have:
                chosen.append(by_id[run_id])
                have.add(run_id)
    return chosen


# ----------------------------------------------------------------------------------------------------
# configurations: one row per model x loss x result-defining settings

@dataclass
class Config:
    model: str
    loss: str
    runs: list[Run]
    variant: str = ""                              # the settings that set it apart ("" when none)
    stats: dict = field(default_factory=dict)      # filled by seg.report.stats
    flags: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.model} + {self.loss}" + (f" [{self.variant}]" if self.variant else "")

    @property
    def seeds(self) -> list[str]:
        return sorted((r.seed for r in self.runs), key=seed_key)

    @property
    def is_cv(self) -> bool:
        """A cross-validation configuration: its runs are folds (tag cv_fold / param cv.fold)."""
        return any(r.fold is not None for r in self.runs)

    @property
    def folds(self) -> list[str]:
        """The folds its runs cover, each once, in order ([] without CV)."""
        return sorted({r.fold for r in self.runs if r.fold is not None}, key=seed_key)

    @property
    def replicates_text(self) -> str:
        """The table's "seeds" cell: the seeds; for CV "folds 0, 1, 2 × seed 0"."""
        if not self.is_cv:
            return ", ".join(self.seeds)
        seeds = sorted(set(self.seeds), key=seed_key)
        return f"folds {', '.join(self.folds)} × seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}"

    def val(self, monitor: str = DEFAULT_MONITOR) -> float:
        """Mean over seeds of `best/<monitor>` (the selection criterion); NaN when no run has it."""
        values = [float(r.metrics[f"best/{monitor}"]) for r in self.runs if _finite(r.metrics.get(f"best/{monitor}"))]
        return sum(values) / len(values) if values else math.nan


def differing_keys(settings: Sequence[dict]) -> list[str]:
    """Keys whose value is not the same in every settings dict (a missing key counts as a value)."""
    keys = sorted(set().union(*settings)) if settings else []
    return [k for k in keys if len({s.get(k, "(absent)") for s in settings}) > 1]


def group_configs(runs: Sequence[Run]) -> list[Config]:
    """Included runs -> one Config per model x loss x settings, ordered by model, loss, variant. A model x
    loss whose runs have different settings gets one Config per settings, labelled `key=value, ...` with
    every key that differs among them, in full."""
    included = [r for r in runs if r.included]
    configs = []
    for model in order([r.model for r in included], MODEL_ORDER):
        for loss in order([r.loss for r in included], LOSS_ORDER):
            mine = [r for r in included if r.config == (model, loss)]
            if not mine:
                continue
            variants: dict[tuple, list[Run]] = {}
            for r in mine:
                variants.setdefault(tuple(sorted(r.settings.items())), []).append(r)
            keys = differing_keys([dict(v) for v in variants])
            for settings, members in sorted(variants.items(), key=lambda kv: min(r.start_ms or 0 for r in kv[1])):
                s = dict(settings)
                label = ", ".join(f"{k}={s.get(k, '(absent)')}" for k in keys)
                configs.append(Config(model, loss, sorted(members, key=lambda r: r.replicate), label))
    _flag(configs)
    return configs


def _flag(configs: Sequence[Config]) -> None:
    """Fewer seeds than the others, a seed twice, a model x loss split by differing settings."""
    if not configs:
        return
    most = max(len(c.runs) for c in configs)
    all_seeds = sorted({s for c in configs for s in c.seeds}, key=seed_key)
    all_reps = sorted({r.replicate for c in configs for r in c.runs})
    for c in configs:
        if c.is_cv:          # the runs of a CV configuration are (fold, seed) pairs
            mine = [r.replicate for r in c.runs]
            name = lambda rep: f"fold {rep[1][2] or rep[1][1]} seed {rep[0][2] or rep[0][1]}"
            if len(c.runs) < most:
                missing = [name(rep) for rep in all_reps if rep not in mine and rep[1] != (-1, 0, "")]
                c.flags.append(f"fewer runs (fold x seed): {len(c.runs)} of {most}"
                               + (f" (missing {', '.join(missing)})" if missing else ""))
            repeated = sorted({rep for rep in mine if mine.count(rep) > 1})
            if repeated:
                c.flags.append(f"{', '.join(name(rep) for rep in repeated)} run more than once with the same settings "
                               "(all averaged)")
            continue
        if len(c.runs) < most:
            missing = [s for s in all_seeds if s not in c.seeds]
            c.flags.append(f"fewer seeds: {len(c.runs)} of {most}"
                           + (f" (missing seed {', '.join(missing)})" if missing else ""))
        repeated = sorted({s for s in c.seeds if c.seeds.count(s) > 1}, key=seed_key)
        if repeated:
            c.flags.append(f"seed {', '.join(repeated)} run more than once with the same settings (all averaged)")
        if c.variant:
            c.flags.append(f"settings differ from other runs of {c.model} + {c.loss}: {c.variant} (not averaged "
                           f"with them)")


def cross_config_differences(configs: Sequence[Config]) -> list[str]:
    """Settings other than the model's and the loss's that differ between configurations, in full."""
    if len(configs) < 2:
        return []
    per = [{k: v for k, v in c.runs[0].settings.items()   # (`model`, `loss`: MLflow's headline copies of the names)
            if k not in ("model", "loss") and not k.startswith(("model.", "loss.", "model_size."))} for c in configs]
    out = []
    for k in differing_keys(per):
        values = Counter(p.get(k, "(absent)") for p in per)
        out.append(f"{k} ({' / '.join(f'{v} ×{n}' for v, n in sorted(values.items()))})")
    return out


def code_provenance(runs: Sequence[Run]) -> tuple[str, bool]:
    """Which code produced `runs`, from their `mlflow.source.git.commit` and `git_dirty` tags ->
    (a line for the report, True when it must be flagged: more than one commit, a run from a tree with
    uncommitted changes, or a run with no commit recorded). Commits are shown as 10 hex digits, most runs first."""
    if not runs:
        return "Code: no run.", False
    commits = Counter(r.tags.get("mlflow.source.git.commit", "")[:10] or "unknown" for r in runs)
    dirty = sum(r.tags.get("git_dirty") == "true" for r in runs)
    listed = ", ".join(f"{c} ({n} run{'s' if n != 1 else ''})"
                       for c, n in sorted(commits.items(), key=lambda kv: (-kv[1], kv[0])))
    mixed = len(commits) > 1
    flag = mixed or dirty > 0 or "unknown" in commits
    text = f"Code: {'commits' if mixed else 'commit'} {listed}"
    if mixed:
        text += f"; the runs come from {len(commits)} different versions of the code"
    if dirty:
        text += f"; {dirty} run{'s' if dirty != 1 else ''} from a tree with uncommitted changes (git_dirty)"
    return text + ".", flag


def monitor_of(runs: Sequence[Run]) -> str:
    """The runs' trainer.monitor (the most common one), else val/dice."""
    found = Counter(r.params.get("trainer.monitor") for r in runs if _is_set(r.params.get("trainer.monitor")))
    return found.most_common(1)[0][0] if found else DEFAULT_MONITOR


def reference_config(configs: Sequence[Config], monitor: str = DEFAULT_MONITOR) -> Config | None:
    """The configuration with the best (highest) mean `best/<monitor>` over its seeds; first on ties;
    None when no configuration has that metric. Test metrics are never looked at."""
    scored = [c for c in configs if _finite(c.val(monitor))]
    return max(scored, key=lambda c: c.val(monitor)) if scored else None


def best_by_validation(uri: str, experiment: str, monitor: str = DEFAULT_MONITOR, sweep_id: str | None = None,
                       tags: dict | None = None, include_smoke: bool | None = None) -> tuple[Run, Config]:
    """(run, its configuration) chosen by validation only, for `seg.predict best:`.

    The configuration: `reference_config` (best mean `best/<monitor>` over seeds) among the FINISHED
    non-parent runs of `experiment` with the given tags, of sweep `sweep_id` (default: every sweep);
    runs of different settings are different configurations. Smoke runs: include_smoke True / False;
    None (default) leaves them out unless no other run matches.
    The run: that configuration's seed with the best `best/<monitor>` (the newest on ties).
    Raises ReportError naming the experiment, filters and metric when nothing qualifies.
    """
    if monitor.startswith("test/"):
        raise ReportError(f"monitor {monitor!r}: selection uses validation metrics only (e.g. val/dice); test "
                          "metrics are reported, never used to choose")
    client = open_store(uri)

    def configs_of(smoke: bool):
        sel = select_runs(client, uri, [experiment], sweep_id, tags, all_sweeps=sweep_id is None, include_smoke=smoke)
        return sel, group_configs(sel.tasks.get(experiment, []))

    try:
        sel, configs = configs_of(bool(include_smoke))
    except ReportError:
        if include_smoke is not None:
            raise
        configs = []
    if not configs and include_smoke is None:   # no other run matched, or none of them has test metrics
        sel, configs = configs_of(True)
    if not configs:
        raise ReportError(f"no FINISHED run with test metrics in experiment {experiment!r} ({sel.filters})")
    ref = reference_config(configs, monitor)
    if ref is None:
        have = sorted({k for c in configs for r in c.runs for k in r.metrics if k.startswith("best/")})
        raise ReportError(f"no FINISHED run of {experiment!r} ({sel.filters}) has metric 'best/{monitor}'; "
                          f"best/ metrics there: {', '.join(have) or 'none'}")
    key = f"best/{monitor}"
    run = max((r for r in ref.runs if _finite(r.metrics.get(key))),
              key=lambda r: (float(r.metrics[key]), r.start_ms or 0))
    return run, ref
