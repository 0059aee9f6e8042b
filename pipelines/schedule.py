"""``schedule``: run retraining on a schedule. ``medmerge schedule`` starts this (the core never imports ZenML).

    python -m pipelines.schedule --cron '0 3 * * 1' --search-config zenml_config/merge_search_demo.yaml \\
        --finetune-config zenml_config/finetune_demo.yaml [--promote-knee] [--crontab-out FILE] \\
        [--systemd-out DIR] [--log FILE] [--debug]

Run from the repository root. On a schedulable orchestrator (Kubernetes, Kubeflow, Airflow, Vertex,
SageMaker ...) merge_search and finetune get a ZenML schedule each (:func:`pipelines.retrain.attach_schedules`);
their hashing steps always run and every later step is cached on content, so a scheduled run with nothing
changed is all cached and registers nothing. Otherwise (the local orchestrator) it says so and writes the
crontab line (and with ``--systemd-out`` a systemd timer) running ``python -m pipelines.retrain``; it
installs neither. The cron expression, crontab line and units are built by :mod:`medmerge.ops.schedule`.
Both run configurations pass the preflight (:mod:`medmerge.preflight`) first: bad input exits 2 with one
line per problem, before ZenML is asked anything; ``--debug`` (or ``MEDMERGE_DEBUG=1``) adds the traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from medmerge.errors import MedmergeError

REPO = Path(__file__).resolve().parents[1]


def schedule(cron_expr: str, search_config: Path, finetune_config: Path, promote_knee: bool = False,
             crontab_out: Path = Path(".medmerge/ops/retrain.crontab"), systemd_out: Path | None = None,
             log_path: Path = Path(".medmerge/ops/retrain.log")) -> None:
    """Attach ZenML schedules where the active orchestrator can schedule, else write the crontab line
    (and the systemd units); relative output paths are under the repository."""
    from medmerge.io.atomic import write_text_atomic
    from medmerge.ops.schedule import (
        crontab_line,
        retrain_argv,
        scheduled_env,
        systemd_on_calendar,
        systemd_units,
        validate_cron,
    )
    from pipelines import retrain as entry

    cron = validate_cron(cron_expr)                     # CronError: exit 2, nothing written
    if systemd_out is not None:
        systemd_on_calendar(cron)                       # refuse an untranslatable expression up front
    configs = []
    for p in (search_config, finetune_config):
        if not p.is_file():
            raise MedmergeError(f"run configuration {p} does not exist")
        configs.append(p.resolve())
    # the preflight: every problem of either configuration one line (PreflightError), before ZenML is asked
    entry.load_configs(str(search_config), str(finetune_config), promote_knee)

    stack = entry.active_stack()
    orch = stack.orchestrator
    flavor = getattr(orch, "flavor", "?")
    if orch.config.is_schedulable:
        print(f"active stack {stack.name!r}: orchestrator {orch.name!r} (flavor {flavor}) can schedule; "
              f"attaching cron '{cron}' to merge_search and finetune")
        for s in entry.attach_schedules(cron, str(configs[0]), str(configs[1])):
            state = "created" if s["created"] else "already there, unchanged"
            print(f"schedule {s['name']} ({s['pipeline']}): {state}, id {s['id']}")
        print("Each scheduled run re-hashes parents and data (those steps are never cached); every later "
              "step is cached on content, so a run with nothing changed is all cached and registers nothing.")
        if promote_knee:
            print("note: --promote-knee applies to the crontab/systemd entry point only; scheduled "
                  "merge_search runs register versions and promotion stays `medmerge promote`.")
        print("List or remove them: zenml pipeline schedule list / zenml pipeline schedule delete NAME")
        return

    print(f"active stack {stack.name!r}: the {flavor} orchestrator {orch.name!r} cannot schedule pipelines; "
          f"no ZenML schedule was created.")
    log = log_path if log_path.is_absolute() else REPO / log_path
    argv = retrain_argv(os.path.abspath(sys.executable), configs[0], configs[1], promote_knee)
    env = scheduled_env()
    line = crontab_line(cron, REPO, argv, log, env)
    out = crontab_out if crontab_out.is_absolute() else REPO / crontab_out
    log.parent.mkdir(parents=True, exist_ok=True)      # cron's `>>` needs the directory
    write_text_atomic(out, line + "\n")
    print(f"wrote the crontab line to {out}:\n  {line}")
    print(f"It is not installed. To install it: crontab -l 2>/dev/null | cat - {out} | crontab -")
    if systemd_out is not None:
        sd = systemd_out if systemd_out.is_absolute() else REPO / systemd_out
        for fname, text in systemd_units(cron, REPO, argv, log, env).items():
            write_text_atomic(sd / fname, text)
        print(f"wrote {sd}/medmerge-retrain.service and .timer (OnCalendar={systemd_on_calendar(cron)}). "
              f"Not installed. To install them: cp {sd}/medmerge-retrain.* ~/.config/systemd/user/ && "
              f"systemctl --user daemon-reload && systemctl --user enable --now medmerge-retrain.timer")
    from medmerge.tracking.names import TRACKING_URI_ENV, configured_tracking_uri

    if configured_tracking_uri() and TRACKING_URI_ENV not in env:
        print("note: MLFLOW_TRACKING_URI carries credentials, so it was left out of the line; give the "
              "scheduled run the URI (the configs' tracking_uri) and the credentials another way")


def main(argv=None) -> int:
    from pipelines._launch import entry_point

    def arguments(ap):
        ap.add_argument("--cron", required=True, help="5-field cron expression, e.g. '0 3 * * 1' (Mondays 03:00)")
        ap.add_argument("--search-config", type=Path, default=Path("zenml_config/merge_search_demo.yaml"))
        ap.add_argument("--finetune-config", type=Path, default=Path("zenml_config/finetune_demo.yaml"))
        ap.add_argument("--promote-knee", action="store_true", help="the scheduled retrain promotes the new knee")
        ap.add_argument("--crontab-out", type=Path, default=Path(".medmerge/ops/retrain.crontab"))
        ap.add_argument("--systemd-out", type=Path, default=None)
        ap.add_argument("--log", dest="log_path", type=Path, default=Path(".medmerge/ops/retrain.log"))

    # prog "medmerge": `medmerge schedule` forwards this line as its own
    return entry_point("medmerge", __doc__, argv, arguments, lambda a: schedule(
        a.cron, a.search_config, a.finetune_config, a.promote_knee, a.crontab_out, a.systemd_out, a.log_path))

if __name__ == "__main__":
    sys.exit(main())
