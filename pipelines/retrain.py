"""``retrain``: run merge_search, then finetune, only when a parent checkpoint or the training data changed
(by content hash) since the last promoted version; otherwise record a no-op run. Exit 0 either way.

    python -m pipelines.retrain --search-config zenml_config/merge_search_demo.yaml \\
        --finetune-config zenml_config/finetune_demo.yaml [--promote-knee] [--dry-run] [--debug]

Every decision is an MLflow run in the experiment ``medmerge-retrain`` (tag ``medmerge.ops.retrain``:
``noop`` or ``ran``, the reasons, the hashes as parameters, ``decision.json``). What is compared is in
:mod:`medmerge.ops.retrain`. ``medmerge schedule`` runs this from cron or a systemd timer, or attaches a ZenML
schedule to the two pipelines where the orchestrator can schedule (:func:`attach_schedules`).
Both run configurations pass the preflight first (:mod:`medmerge.preflight`): bad input exits 2, one line per
problem, before anything runs; ``--debug`` (or ``MEDMERGE_DEBUG=1``) adds the traceback of an error.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from medmerge.errors import MedmergeError
from medmerge.io.atomic import exclusive_lock

REPO = Path(__file__).resolve().parents[1]
SCHEDULE_PREFIX = "medmerge-retrain"


def load_configs(search_config: str, finetune_config: str, promote_knee: bool = False):
    """Both run configurations through the preflight (:mod:`medmerge.preflight`): every problem of either is
    one line of the PreflightError, before ZenML loads or anything runs."""
    from medmerge.preflight import check_run_configs

    return check_run_configs(search=search_config, finetune=finetune_config,
                             search_overrides={"promote": "knee"} if promote_knee else None)


def run(search_config: str, finetune_config: str, promote_knee: bool = False, dry_run: bool = False,
        lock_file: str | Path = ".medmerge/ops/retrain.lock") -> dict:
    """Decide; when something changed run merge_search (promoting the knee if asked) and finetune; record it."""
    from medmerge.ops import retrain
    from medmerge.tracking.registry import check_reachable

    search_cfg, ft_cfg = load_configs(search_config, finetune_config, promote_knee)
    uri = search_cfg.resolved_tracking_uri()
    check_reachable(uri)
    check_reachable(ft_cfg.resolved_tracking_uri())
    with exclusive_lock(Path(lock_file)) as held:
        if held is None:
            print(f"retrain: another retrain holds {lock_file}; nothing done")
            return {"decision": None, "outcome": "busy"}
        decision = retrain.decide(search_cfg, ft_cfg)
        print("retrain: " + decision.describe().replace("\n", "\nretrain: "))
        if dry_run:
            print("retrain: dry run: nothing run, nothing recorded")
            return {"decision": decision, "outcome": "dry-run"}
        rid = retrain.open_record(decision, search_cfg, ft_cfg, uri)
        link = f"{uri}/#/experiments/{_experiment_id(uri)}/runs/{rid}"
        if not decision.changed:
            print(f"retrain: no-op: nothing changed since the promoted versions; recorded {link}")
            return {"decision": decision, "outcome": "noop", "run_id": rid}
        print(f"retrain: running merge_search then finetune (MLflow run {link})")
        if not promote_knee:
            print("retrain: note: without --promote-knee nothing is promoted, so the next retrain compares with "
                  "the same staged version (promote one: medmerge promote NAME VERSION)")
        return _run_pipelines(decision, search_config, finetune_config, promote_knee, uri, rid)


def _experiment_id(uri: str) -> str:
    from medmerge.ops.retrain import RETRAIN_EXPERIMENT
    from medmerge.tracking import runs

    return runs.find_experiment(uri, RETRAIN_EXPERIMENT) or "0"


def _run_pipelines(decision, search_config: str, finetune_config: str, promote_knee: bool, uri: str, rid: str) -> dict:
    from medmerge.ops import retrain
    from pipelines import finetune, merge_search

    try:
        ms = merge_search.run(search_config, promote_knee)
        ft = finetune.run(finetune_config)
    except BaseException as exc:
        retrain.close_record(uri, rid, ok=False, error=f"{type(exc).__name__}: {exc}")
        raise
    tasks = ft["tasks"]   # {task label: its summary, run and promotion}; one entry for a one-task run
    if len(tasks) == 1:
        (task,) = tasks.values()
        finetuned = {"finetune_run": task["tracking"].parent_run_id, "finetune_versions": task["summary"].versions}
    else:
        finetuned = {"finetune_run": {t: v["tracking"].parent_run_id for t, v in tasks.items()},
                     "finetune_versions": {t: v["summary"].versions for t, v in tasks.items()}}
    outputs = {"merge_search_run": ms["results"].parent_run_id, "merge_versions": ms["versions"], **finetuned}
    promotion = ms.get("promotion")
    if promotion is not None and promotion.candidate is not None:   # the promote step's decision, and why
        outputs["promotion"] = promotion.summary()
        if promotion.promoted:
            outputs["promoted_knee" if promotion.policy == "knee" else "promoted"] = \
                f"{promotion.candidate} v{promotion.version}"
    retrain.close_record(uri, rid, ok=True, outputs=outputs)
    print(f"retrain: done: merge versions {ms['versions']}, fine-tuned versions {finetuned['finetune_versions']}")
    return {"decision": decision, "outcome": "ran", "run_id": rid, "merge_search": ms, "finetune": ft}


# --- schedules on an orchestrator that can schedule (medmerge schedule) --------------------------------

def active_stack():
    """The active ZenML stack (its ``orchestrator.config.is_schedulable`` says whether it can schedule)."""
    from zenml.client import Client

    return Client().active_stack


def find_schedule(name: str):
    """The ZenML schedule called ``name`` (id, cron expression), or None."""
    from zenml.client import Client

    page = Client().list_schedules(name=name)
    return next(iter(page.items), None)


@contextlib.contextmanager
def _repo_source_root():
    """Compile the pipelines with the repository as ZenML's source root (``steps.*``, ``materializers``),
    whatever started the process (the ``medmerge`` console script lives in the virtualenv's bin/)."""
    from zenml.client import Client
    from zenml.utils import source_utils

    if Client.find_repository() is not None:  # `zenml init` was run: ZenML uses that root
        yield
        return
    previous = getattr(source_utils, "_CUSTOM_SOURCE_ROOT", None)
    source_utils.set_custom_source_root(str(REPO))
    try:
        yield
    finally:
        source_utils.set_custom_source_root(previous)


def attach_schedules(cron: str, search_config: str, finetune_config: str) -> list[dict]:
    """Register a ZenML ``Schedule(cron_expression=cron)`` for merge_search and for finetune on the active
    orchestrator. Returns what ZenML holds afterwards: ``[{pipeline, name, id, created}]``.

    Never claims what it did not create: a schedule of the same name with the same cron is reported as
    existing; with another cron it is an error (nothing submitted); after submitting, ZenML is asked for
    the schedule, and its absence is an error."""
    from zenml.config.schedule import Schedule

    from pipelines import finetune, merge_search

    load_configs(search_config, finetune_config)  # a bad field is named before anything is submitted
    todo = [(merge_search.merge_search, "merge_search", search_config),
            (finetune.finetune, "finetune", finetune_config)]
    out, submit = [], []
    for pipeline, pname, cfg in todo:
        name = f"{SCHEDULE_PREFIX}-{pname}"
        existing = find_schedule(name)
        if existing is None:
            submit.append((pipeline, pname, cfg, name))
        elif (existing.cron_expression or "").split() == cron.split():
            out.append({"pipeline": pname, "name": name, "id": str(existing.id), "created": False})
        else:
            raise MedmergeError(f"a ZenML schedule {name!r} exists with cron {existing.cron_expression!r}; nothing "
                                f"was scheduled. Change it (zenml pipeline schedule update {name} --cron-expression "
                                f"'{cron}') or delete it (zenml pipeline schedule delete {name}) first")
    with _repo_source_root():
        for pipeline, pname, cfg, name in submit:
            try:
                pipeline.with_options(schedule=Schedule(name=name, cron_expression=cron), config_path=cfg)()
            except Exception as exc:
                done = ", ".join(f"{d['pipeline']} ({d['name']})" for d in out) or "nothing"
                raise MedmergeError(f"scheduling {pname} failed: {exc}; scheduled so far: {done}") from exc
            got = find_schedule(name)
            if got is None:
                raise MedmergeError(f"ZenML reports no schedule {name!r} after submitting {pname}: not scheduled")
            out.append({"pipeline": pname, "name": name, "id": str(got.id), "created": True})
    return out


def main(argv=None) -> int:
    from pipelines._launch import entry_point

    def arguments(ap):
        ap.add_argument("--search-config", required=True, help="merge_search run config (ZenML YAML)")
        ap.add_argument("--finetune-config", required=True, help="finetune run config (ZenML YAML)")
        ap.add_argument("--promote-knee", action="store_true", help="promote the new knee to staging (as merge_search)")
        ap.add_argument("--dry-run", action="store_true", help="say what changed; run and record nothing")
        ap.add_argument("--lock-file", default=".medmerge/ops/retrain.lock", help="held while deciding and running")

    return entry_point("retrain", __doc__, argv, arguments, lambda args: run(
        args.search_config, args.finetune_config, args.promote_knee, args.dry_run, args.lock_file))


if __name__ == "__main__":
    sys.exit(main())
