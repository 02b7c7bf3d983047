"""The `carecast` command line: thin commands that parse options, call plain functions and print."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import click

from carecast import __version__
from carecast.config import Settings, describe
from carecast.errors import CareCastError, ExitCode
from carecast.security.permissions import ROLES

F = TypeVar("F", bound=Callable[..., Any])


def _settings() -> Settings:
    return Settings.from_env()


def handle_errors(fn: F) -> F:
    """Turn CareCast errors into their message (safe by construction) and exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CareCastError as exc:
            click.secho(f"error: {exc.public_message}", fg="red", err=True)
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]


def _print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="carecast")
def main() -> None:
    """CareCast: real-time patient-outcome prediction.

    Settings come from CARECAST_* environment variables (see `carecast config`).
    """


@main.command("config")
@handle_errors
def config_cmd() -> None:
    """List every CARECAST_* setting with its default and what it does, and check the current values."""
    _settings()  # validates the environment: a bad value names its variable
    for name, default, doc in describe():
        click.echo(f"{name}  (default: {default or '-'})\n    {doc}")


# -- database ----------------------------------------------------------------------------------------------

@main.group()
def db() -> None:
    """Database schema management (Alembic migrations)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@handle_errors
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (also done automatically on start)."""
    from carecast.crypto import load_keyring
    from carecast.store.db import make_engine
    from carecast.store.migrate import current_revision, upgrade

    settings = _settings()
    keyring = load_keyring(settings)  # revisions that encrypt stored text need the data key
    engine = make_engine(settings.database_url)
    upgrade(engine, revision, keyring=keyring)
    click.echo(f"database at revision {current_revision(engine)}")
    engine.dispose()


@db.command("current")
@handle_errors
def db_current() -> None:
    """Show the database's migration revision and the newest one available."""
    from carecast.store.db import make_engine
    from carecast.store.migrate import current_revision, head_revision

    engine = make_engine(_settings().database_url)
    click.echo(f"current: {current_revision(engine) or '(empty)'}  head: {head_revision(engine)}")
    engine.dispose()


# -- keys --------------------------------------------------------------------------------------------------

@main.group()
def keys() -> None:
    """Data-encryption keys."""


@keys.command("generate")
def keys_generate() -> None:
    """Print a new random master key for CARECAST_DATA_KEY (store it in a secret manager)."""
    from carecast.crypto import new_master_key

    click.echo(new_master_key())


@keys.command("rotate")
@click.option("--backup", "backup_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where the backup taken first goes (default: $CARECAST_DATA_DIR/backups/pre-rotation-TIME.tar).")
@click.option("--passphrase-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="File holding the passphrase that seals the keyring in the backup (else prompted for).")
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(1, 100_000),
              help="Values re-encrypted per transaction.")
@handle_errors
def keys_rotate(backup_path: Path | None, passphrase_file: Path | None, batch_size: int) -> None:
    """New data key, every encrypted value re-encrypted, the old key retired (stop other CareCast processes first).

    A backup is taken first. An interrupted rotation resumes when the command is run again.
    """
    from datetime import UTC, datetime

    from carecast.security.keyrotation import check_rotatable, rotate_keys

    settings = _settings()
    check_rotatable(settings)
    store = _open_store()
    try:
        resuming = bool(store.keyring.retiring)
        passphrase = None
        if not resuming and not settings.kms_key:
            passphrase = _backup_passphrase(passphrase_file, confirm=True)
        if backup_path is None and not resuming:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            backup_path = settings.data_dir / "backups" / f"pre-rotation-{stamp}.tar"
        report = rotate_keys(settings, store, backup_path=backup_path, passphrase=passphrase, batch=batch_size,
                             progress=lambda msg: click.echo(msg, err=True))
    finally:
        store.close()
    _print_json(report.to_dict())


def _backup_passphrase(passphrase_file: Path | None, *, confirm: bool) -> str:
    if passphrase_file is not None:
        return passphrase_file.read_text(encoding="utf-8").rstrip("\r\n")
    return str(click.prompt("Backup passphrase (seals the keyring)", hide_input=True, confirmation_prompt=confirm))


# -- ingestion ---------------------------------------------------------------------------------------------

def _open_store() -> Any:
    from carecast.store import Store

    return Store.open(_settings())


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--mapping", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Column mapping (TOML) for CSV files; see docs/csv-mapping.md.")
@click.option("--report", is_flag=True, help="List quarantined records (where, field, reason) and exit.")
@click.option("--limit", default=50, show_default=True, help="Rows shown by --report.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@handle_errors
def ingest(paths: tuple[Path, ...], mapping: Path | None, report: bool, limit: int, as_json: bool) -> None:
    """Ingest FHIR R4 (Bundle .json, bulk .ndjson), wearable .jsonl, DICOM and CSV files or directories.

    Exit code 0: all accepted; 3: some records quarantined (the rest stored); 4: nothing stored.
    """
    from carecast.jobs.ingest import ingest_paths
    from carecast.store import queries

    store = _open_store()
    try:
        if report:
            rows = queries.quarantine(store.engine, limit=limit)
            if as_json:
                _print_json(rows)
            elif not rows:
                click.echo("quarantine is empty")
            for r in rows if not as_json else []:
                at = f" [{r['field']}]" if r["field"] else ""
                click.echo(f"#{r['id']} batch {r['batch_id']} {r['location']} {r['resource_type'] or ''}{at}: "
                           f"{r['reason']}")
            return
        if not paths:
            raise click.UsageError("give at least one PATH, or --report")
        csv_mapping = None
        if mapping is not None:
            from carecast.ingest.tabular import load_mapping

            csv_mapping = load_mapping(mapping)
        summary = _run_ingest(ingest_paths, paths, store, csv_mapping)
    finally:
        store.close()
    if as_json:
        _print_json(summary.to_dict())
    else:
        _print_summary(summary)
    sys.exit(summary.exit_code)


def _run_ingest(ingest_paths: Callable[..., Any], paths: tuple[Path, ...], store: Any, mapping: Any) -> Any:
    from tqdm import tqdm

    with tqdm(unit=" records", disable=None, file=sys.stderr, dynamic_ncols=True) as bar:
        return ingest_paths(list(paths), store.writer(), chunk_size=_settings().ingest_chunk, csv_mapping=mapping,
                            progress=bar.update, on_file=lambda f: bar.set_description(f.path.name[:30]))


def _print_summary(summary: Any) -> None:
    for f in summary.files:
        click.echo(f"{f.label}: {f.inserted} new, {f.updated} updated, {f.unchanged} unchanged, "
                   f"{f.rejected} quarantined, {f.skipped} skipped (batch {f.batch_id})")
        for reason, n in sorted(f.reasons.items(), key=lambda kv: -kv[1])[:5]:
            click.echo(f"    {n} x {reason}")
    d = summary.to_dict()
    click.echo(f"total: {d['inserted']} new, {d['updated']} updated, {d['unchanged']} unchanged, "
               f"{d['rejected']} quarantined, {d['skipped']} skipped")
    if d["rejected"]:
        click.echo("see `carecast ingest --report` for the quarantined records")


# -- simulation --------------------------------------------------------------------------------------------

@main.command()
@click.option("--patients", default=200, show_default=True, help="Number of patients.")
@click.option("--days", default=7.0, show_default=True, help="Simulated days.")
@click.option("--seed", default=0, show_default=True, help="Random seed; the same seed gives the same files.")
@click.option("--wearable-share", default=0.3, show_default=True, help="Share of admissions with a wearable.")
@click.option("--shift", type=click.Choice(["older", "sicker", "covid"]), default=None,
              help="Shift the population (for drift tests).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output directory (FHIR NDJSON, wearables.jsonl, truth/).")
@handle_errors
def simulate(patients: int, days: float, seed: int, wearable_share: float, shift: str | None, out_dir: Path) -> None:
    """Write a synthetic hospital: FHIR R4 NDJSON, wearable readings and the ground truth."""
    summary = _simulate(patients, days, seed, wearable_share, shift, out_dir)
    _print_json(summary.to_dict())


def _simulate(patients: int, days: float, seed: int, wearable_share: float, shift: str | None,
              out_dir: Path) -> Any:
    from tqdm import tqdm

    from carecast.simulate import SimulationConfig
    from carecast.simulate import simulate as run_simulation

    try:
        config = SimulationConfig(seed=seed, patients=patients, days=days, wearable_share=wearable_share, shift=shift)
    except ValueError as exc:  # a bad option, named by the simulator's own message
        raise click.UsageError(str(exc)) from None
    with tqdm(total=patients, unit=" patients", disable=None, file=sys.stderr, desc="simulating") as bar:
        return run_simulation(config, out_dir, progress=bar.update)


@main.command()
@click.option("--patients", default=300, show_default=True, help="Number of patients to simulate.")
@click.option("--days", default=7.0, show_default=True, help="Simulated days.")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
@handle_errors
def demo(patients: int, days: float, seed: int) -> None:
    """Simulate a hospital, ingest it into the store and print a summary (offline; `make run` starts
    `carecast run`)."""
    from carecast.jobs.ingest import ingest_paths
    from carecast.store import queries

    settings = _settings()
    out_dir = settings.data_dir / "simulated" / f"seed{seed}-p{patients}-d{days:g}"
    if not (out_dir / "truth" / "summary.json").exists():
        click.echo(f"simulating {patients} patients over {days:g} days into {out_dir}")
        _simulate(patients, days, seed, 0.3, None, out_dir)
    store = _open_store()
    try:
        click.echo(f"ingesting {out_dir} into {store.engine.url.render_as_string(hide_password=True)}")
        summary = _run_ingest(ingest_paths, (out_dir,), store, None)
        _print_summary(summary)
        click.echo("\nstore now holds:")
        for name, n in queries.counts(store.engine).items():
            click.echo(f"  {name:<20} {n:>10,}")
        outcomes = sorted(queries.outcome_counts(store.engine).items())
        click.echo("outcomes: " + ", ".join(f"{k} {v}" for k, v in outcomes))
        by_source = queries.observation_counts_by(store.engine, "source")
        click.echo("observations by source: " + ", ".join(f"{k} {v:,}" for k, v in by_source.items()))
        truth = json.loads((out_dir / "truth" / "summary.json").read_text())
        best = truth.get("summary", {}).get("best_auroc_deterioration_24h")
        if best is not None:
            click.echo(f"simulator's best achievable AUROC for deterioration within 24 h: {float(best):.3f}")
    finally:
        store.close()
    sys.exit(ExitCode.OK if summary.exit_code in (ExitCode.OK, ExitCode.PARTIAL) else summary.exit_code)


# -- models ------------------------------------------------------------------------------------------------

def _registry() -> Any:
    from carecast.models.registry import Registry

    return Registry(_settings().model_registry)


def _progress_printer() -> Callable[[str], None]:
    def say(message: str) -> None:
        click.echo(f"  .. {message}", err=True)

    return say


def _metric(report: dict[str, Any], key: str) -> str:
    m = report["metrics"][key]
    return f"{m['value']:.3f} (95% CI {m['ci_low']:.3f}-{m['ci_high']:.3f})"


@main.command()
@click.option("--task", type=click.Choice(["deterioration_24h", "inhospital_mortality", "readmission_30d",
                                           "long_stay_7d"]), help="Outcome task trained on the store's data.")
@click.option("--truth", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Simulator truth/risk.csv: report the best achievable AUROC beside the model's.")
@click.option("--table", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Train on a CSV table instead of the store (needs --target and --id-column).")
@click.option("--target", help="Outcome column of --table (0/1).")
@click.option("--id-column", help="Patient id column of --table (the split is by patient).")
@click.option("--drop", default="", help="Comma-separated columns of --table that must never be features.")
@click.option("--time-column", help="Column of --table ordering rows in time (test on the latest).")
@click.option("--seed", default=0, show_default=True)
@click.option("--bootstrap", default=500, show_default=True, help="Bootstrap resamples for the 95% CIs.")
@handle_errors
def train(task: str | None, truth: Path | None, table: Path | None, target: str | None, id_column: str | None,
          drop: str, time_column: str | None, seed: int, bootstrap: int) -> None:
    """Train, calibrate and validate a model; save it with its card and report in the registry.

    Prints a JSON summary with the AUROC and its 95% CI. The first model of a task becomes champion;
    later ones become challenger (promote with `carecast models promote`).
    """
    if table is not None:
        from carecast.models.tabular import train_table

        if not target or not id_column:
            raise click.UsageError("--table needs --target and --id-column")
        out = train_table(table, target=target, id_column=id_column,
                          drop=[c for c in drop.split(",") if c.strip()], time_column=time_column, seed=seed,
                          n_boot=bootstrap, registry=_registry(), progress=_progress_printer())
        _print_json(out)
        return
    if task is None:
        raise click.UsageError("give --task (or --table)")
    from carecast.jobs.training import run_training

    store = _open_store()
    try:
        run = run_training(store, _registry(), task, truth_csv=truth, seed=seed, n_boot=bootstrap,
                           progress=_progress_printer())
    finally:
        store.close()
    report = run.result.report
    summary = {
        "task": task, "version": run.version, "alias": run.alias, "model": report["chosen"],
        "n_train": report["n_train"], "n_test": report["n_test"],
        "auroc": report["metrics"]["auroc"], "auprc": report["metrics"]["auprc"],
        "brier": report["metrics"]["brier"], "calibration_slope": report["metrics"]["calibration_slope"],
        "baselines_auroc": {k: v["auroc"] for k, v in report["baselines"].items()},
        "oracle_auroc": report.get("oracle", {}).get("auroc"),
        "training_seconds": round(report["training_seconds"], 1),
    }
    _print_json(summary)
    click.echo(f"AUROC {_metric(report, 'auroc')}; report in the registry under {task}/{run.version}/report/",
               err=True)


@main.group()
def benchmark() -> None:
    """Benchmarks on real clinical data that installs offline."""


@benchmark.command("support2")
@click.option("--seed", default=0, show_default=True)
@click.option("--bootstrap", default=500, show_default=True, help="Bootstrap resamples for the 95% CIs.")
@handle_errors
def benchmark_support2_cmd(seed: int, bootstrap: int) -> None:
    """180-day mortality on SUPPORT2 (9,105 patients) against the SUPPORT model's own estimate.

    Needs the optional extra `carecast[support2]` (the SurvSet package). The SUPPORT model estimates
    (num_surv2m, num_surv6m), num_aps, fac_sfdm2 and the post-entry DNR order are never features; the
    day-3 SUPPORT physiology score is a feature and a baseline, like NEWS2 in the clinical tasks.
    """
    from carecast.models.tabular import benchmark_support2

    _print_json(benchmark_support2(seed=seed, n_boot=bootstrap, registry=_registry(), progress=_progress_printer()))


@main.group()
def models() -> None:
    """The model registry: list, show, promote, roll back."""


@models.command("list")
@click.option("--task", help="Only this task.")
@handle_errors
def models_list(task: str | None) -> None:
    """List model versions with their AUROC and aliases."""
    reg = _registry()
    for t in [task] if task else reg.tasks():
        aliases = reg.aliases(t)
        for version in reg.versions(t):
            card = reg.card(t, version)
            tags = ",".join(a for a in ("champion", "challenger") if aliases.get(a) == version)
            auroc = card.get("metrics", {}).get("auroc", {}).get("value")
            click.echo(f"{t:<22} {version:<26} {card.get('estimator', ''):<24} "
                       f"AUROC {auroc if auroc is None else f'{auroc:.3f}'}  {tags}")


@models.command("show")
@click.argument("task")
@click.argument("version", default="champion")
@handle_errors
def models_show(task: str, version: str) -> None:
    """Print the model card of VERSION (a version id, champion or challenger)."""
    card = _registry().card(task, version)
    card = {k: v for k, v in card.items() if k != "reference"}
    _print_json(card)


@models.command("promote")
@click.argument("task")
@click.argument("version")
@click.option("--alias", type=click.Choice(["champion", "challenger"]), default="champion", show_default=True)
@click.option("--reason", default="", help="Why (recorded in the alias history).")
@handle_errors
def models_promote(task: str, version: str, alias: str, reason: str) -> None:
    """Point ALIAS (champion by default) at VERSION."""
    data = _registry().promote(task, version, alias, reason=reason)
    click.echo(f"{task}: {alias} is now {data[alias]}")


@models.command("rollback")
@click.argument("task")
@click.option("--reason", default="rollback", help="Why (recorded in the alias history).")
@handle_errors
def models_rollback(task: str, reason: str) -> None:
    """Make the previous champion champion again."""
    data = _registry().rollback(task, reason=reason)
    click.echo(f"{task}: champion is now {data['champion']}")


# -- serving -----------------------------------------------------------------------------------------------

@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option("--workers", type=int, default=None, help="gunicorn workers (default: one per core).")
@handle_errors
def serve(host: str, port: int, workers: int | None) -> None:
    """Run the REST API under gunicorn (graceful shutdown within 10 s; OMP threads 1).

    Without CARECAST_QUEUE_URL each worker process also scores queued patients in a thread.
    """
    from carecast.serving.wsgi import prepare_metrics_dir
    from carecast.serving.wsgi import serve as run

    # first: the workers' metrics are merged across processes only if this is set before any metric exists
    prepare_metrics_dir(_settings().data_dir / "metrics" / f"serve-{port}")
    store = _open_store()  # migrate and check keys once, before the workers start
    store.close()
    run(host=host, port=port, workers=workers, app_factory=_app_factory())


def _app_factory() -> Callable[[], Any]:
    """Builds each gunicorn worker's app with the embedded scoring worker (serving may not import jobs)."""
    from carecast.jobs.worker import WorkerThread
    from carecast.serving.app import app_from_env

    # the embedded worker also scores with the challenger, in shadow (stored, compared, never shown)
    return functools.partial(app_from_env, worker_factory=functools.partial(WorkerThread, shadow_challenger=True))


@main.command()
@click.option("--max-jobs", type=int, default=None, help="Stop after this many jobs (default: run until stopped).")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
              help="Serve this worker's Prometheus metrics on this port.")
@handle_errors
def worker(max_jobs: int | None, metrics_port: int | None) -> None:
    """Run a scoring worker: claim queued patients, score them with the champion models, publish updates.

    Logs are JSON lines on stderr; with --metrics-port its Prometheus metrics (predictions, alerts,
    ingest-to-score latency, failures) are served on 0.0.0.0:PORT/metrics."""
    import signal
    import threading

    from carecast.jobs.worker import run_worker
    from carecast.monitoring.logs import configure_logging
    from carecast.scoring.events import make_bus
    from carecast.scoring.predictor import Predictor
    from carecast.scoring.queue import make_queue, new_worker_id

    settings = _settings()
    configure_logging(settings.log_level)
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port)
    store = _open_store()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        predictor = Predictor(_registry(), challengers=True)  # the challenger scores in shadow beside the champion
        stats = run_worker(store, predictor, make_queue(settings, engine=store.engine), make_bus(settings.events_url),
                           worker_id=new_worker_id(), stop=stop, max_jobs=max_jobs, shadow_challenger=True)
    except KeyboardInterrupt:
        stop.set()
        return
    finally:
        store.close()
    click.echo(f"worker stopped: {stats}")


@main.command()
@click.option("--speed", default=60.0, show_default=True, help="Simulated seconds per real second.")
@click.option("--days", default=30.0, show_default=True, help="Simulated days the feed lasts.")
@click.option("--resume/--restart", default=True, show_default=True,
              help="Go on from where an earlier feed stopped, or start again from the end of the history.")
@handle_errors
def live(speed: float, days: float, resume: bool) -> None:
    """Stream the synthetic hospital into the store live, after the history `carecast run` ingested.

    New readings are written about once a second and their patients queued for scoring. Stops at the end
    of the simulated window, or on Ctrl-C / SIGTERM.
    """
    import signal
    import threading

    from carecast.jobs.drift import drift_scheduler_from_settings
    from carecast.jobs.live import HISTORY, live_config, resume_point, stream_hospital
    from carecast.jobs.retrain import RetrainScheduler, scheduler_from_settings
    from carecast.scoring.queue import make_queue

    if not speed > 0:
        raise click.UsageError("--speed must be positive")
    if not days > 0:
        raise click.UsageError("--days must be positive")
    settings = _settings()
    config = live_config(HISTORY, days)
    store = _open_store()
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGTERM, signal.SIGINT)}
    scheduler: RetrainScheduler | None = None
    drift: RetrainScheduler | None = None
    try:
        start_at, skip_before = config.start, None
        if resume:
            found = resume_point(store, config)
            if found is not None:
                start_at, skip_before = found, found - LIVE_OVERLAP
        click.echo(f"live feed: {config.patients} patients over {days:g} simulated days from "
                   f"{start_at.isoformat(timespec='minutes')}, {speed:g}x real time")
        report = _live_reporter()
        scheduler = scheduler_from_settings(settings)  # retraining behind the gates (CARECAST_RETRAIN_INTERVAL_HOURS)
        if scheduler is not None:
            scheduler.start()
        drift = drift_scheduler_from_settings(settings)  # drift checks, alerts counted (CARECAST_DRIFT_INTERVAL_HOURS)
        if drift is not None:
            drift.start()
        stats = stream_hospital(store, config, speed=speed, start_at=start_at, stop=stop, skip_before=skip_before,
                                queue=make_queue(settings, engine=store.engine), on_written=report)
    finally:
        if scheduler is not None:
            scheduler.stop()
        if drift is not None:
            drift.stop()
        store.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    click.echo(f"live feed stopped at {stats.simulated_until}: {stats.inserted:,} new records in {stats.batches:,} "
               f"batches, {stats.rejected:,} quarantined, {stats.patients_queued:,} patients queued for scoring")


LIVE_OVERLAP = timedelta(hours=2)  # rewritten on resume (idempotent): the feed's last minutes may be incomplete
LIVE_REPORT_S = 60.0


def _live_reporter() -> Callable[[Any, Any], None]:
    import time

    last = [time.monotonic()]

    def report(_summary: Any, stats: Any) -> None:
        if time.monotonic() - last[0] >= LIVE_REPORT_S:
            last[0] = time.monotonic()
            at = stats.simulated_until.isoformat(timespec="minutes") if stats.simulated_until else "-"
            click.echo(f"live feed at {at}: {stats.inserted:,} new records, {stats.patients_queued:,} patients "
                       "queued for scoring")

    return report


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option("--workers", type=int, default=None, help="gunicorn workers (default: one per core).")
@click.option("--speed", default=60.0, show_default=True, help="Live feed: simulated seconds per real second.")
@handle_errors
def run(host: str, port: int, workers: int | None, speed: float) -> None:
    """Start CareCast with a synthetic hospital streaming live into it (what `make run` does).

    The first time: simulate 10 days of a 400-patient hospital, ingest it, train the deterioration model
    and create the first admin user with a generated password (printed once). Then start the live feed
    (`carecast live`, a child process) and the API on HOST:PORT. Ctrl-C stops both.
    """
    import os
    import subprocess

    from carecast.serving.wsgi import prepare_metrics_dir
    from carecast.serving.wsgi import serve as run_server

    if not speed > 0:
        raise click.UsageError("--speed must be positive")
    settings = _settings()
    prepare_metrics_dir(settings.data_dir / "metrics" / f"serve-{port}")  # before any metric exists (see serve)
    store = _open_store()
    try:
        _prepare_history(settings, store)
        password = _first_admin(store)
        admin, token = _admin_token(store)
    finally:
        store.close()
    # A child process, not a thread: gunicorn forks its workers from this process.
    feed = subprocess.Popen([sys.executable, "-m", "carecast.cli", "live", "--speed", f"{speed:g}"])  # noqa: S603
    base = f"http://{host}:{port}"
    click.echo("")
    click.secho(f"CareCast is starting at {base}  (API: {base}/api/v1/docs)", bold=True)
    if password is not None:
        click.echo(f"first admin user: {admin}  password: {password}")
        click.echo("    (shown once and stored only as a hash: keep it now)")
    click.echo(f"a 12-hour API token for {admin}: {token}")
    click.echo(f"    curl -H 'Authorization: Bearer {token}' {base}/api/v1/models")
    click.echo("watch risks change live as a clinician of a ward:")
    click.echo("    carecast users create dr-demo --role clinician --unit 'Medical Ward 4W'")
    click.echo("    TOKEN=$(carecast tokens issue dr-demo --name demo --hours 12)")
    click.echo(f"    curl -N -H \"Authorization: Bearer $TOKEN\" {base}/api/v1/stream")
    click.echo("Ctrl-C stops the server and the live feed.\n")
    parent = os.getpid()
    try:
        run_server(host=host, port=port, workers=workers, app_factory=_app_factory())
    finally:
        if os.getpid() == parent:  # gunicorn's workers are forked from here and leave through here too
            _stop_child(feed)


def _stop_child(child: Any, timeout: float = 15.0) -> None:
    import subprocess

    if child.poll() is None:
        child.terminate()
    try:
        child.wait(timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _prepare_history(settings: Settings, store: Any) -> None:
    """The history `run` needs: a simulated hospital in an empty store, a champion model, scored patients."""
    from sqlalchemy import func, select

    from carecast.jobs.ingest import ingest_paths
    from carecast.jobs.live import HISTORY, queue_in_house
    from carecast.jobs.training import run_training
    from carecast.scoring.queue import make_queue
    from carecast.store import schema as S

    h = HISTORY
    out_dir = settings.data_dir / "simulated" / f"seed{h.seed}-p{h.patients}-d{h.days:g}-w{h.wearable_share:g}"
    with store.engine.connect() as conn:
        empty = not conn.execute(select(func.count()).select_from(S.Patient)).scalar()
    changed = False
    if empty:
        if not (out_dir / "truth" / "summary.json").exists():
            click.echo(f"simulating the history: {h.patients} patients over {h.days:g} days into {out_dir}")
            _simulate(h.patients, h.days, h.seed, h.wearable_share, None, out_dir)
        click.echo("ingesting the history")
        _print_summary(_run_ingest(ingest_paths, (out_dir,), store, None))
        changed = True
    registry = _registry()
    if not registry.aliases(RUN_TASK).get("champion"):
        click.echo(f"training {RUN_TASK} (the first model becomes champion)")
        truth = out_dir / "truth" / "risk.csv"
        trained = run_training(store, registry, RUN_TASK, truth_csv=truth if truth.exists() else None,
                               n_boot=RUN_BOOTSTRAP, progress=_progress_printer())
        auroc = trained.result.report["metrics"]["auroc"]["value"]
        click.echo(f"{RUN_TASK} {trained.version}: AUROC {auroc:.3f} on held-out patients")
        changed = True
    if changed:
        n = queue_in_house(store, make_queue(settings, engine=store.engine))
        click.echo(f"{n} in-house patients queued for scoring")


RUN_TASK = "deterioration_24h"
RUN_BOOTSTRAP = 200
ADMIN = "admin"


def _first_admin(store: Any) -> str | None:
    """Create the first admin (with a generated password, returned) when there is no user at all."""
    import secrets

    from carecast.security.users import create_user, list_users

    if list_users(store.engine):
        return None
    password = secrets.token_urlsafe(18)
    create_user(store.engine, ADMIN, password, "admin")
    return password


def _admin_token(store: Any) -> tuple[str, str]:
    """A fresh 12-hour token for the first admin user (by id)."""
    from sqlalchemy import select

    from carecast.errors import NotFoundError
    from carecast.security.permissions import ROLE_PERMISSIONS
    from carecast.security.tokens import issue_token
    from carecast.store import schema as S

    with store.engine.connect() as conn:
        user = conn.execute(select(S.User.id, S.User.username).where(S.User.role == "admin", S.User.active.is_(True))
                            .order_by(S.User.id).limit(1)).first()
    if user is None:
        raise NotFoundError("no active admin user; create one with `carecast users create NAME --role admin`")
    scopes = [str(p) for p in ROLE_PERMISSIONS["admin"]]
    return user.username, issue_token(store.engine, int(user.id), "carecast run", scopes, ttl_hours=12)


# -- users, tokens, audit ----------------------------------------------------------------------------------

@main.group()
def users() -> None:
    """User accounts: roles and care-team units."""


@users.command("create")
@click.argument("username")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--unit", "units", multiple=True, help="A care-team unit (repeat for several).")
@click.password_option(help="Password (at least 12 characters); prompted for when not given.")
@handle_errors
def users_create(username: str, role: str, units: tuple[str, ...], password: str) -> None:
    """Create a user. Passwords are stored as argon2id hashes."""
    from carecast.security.users import create_user

    store = _open_store()
    try:
        create_user(store.engine, username, password, role, units)
    finally:
        store.close()
    click.echo(f"created {role} {username}" + (f" in {', '.join(units)}" if units else ""))


@users.command("list")
@handle_errors
def users_list() -> None:
    """List users with their roles, units and lock state."""
    from carecast.security.users import list_users

    store = _open_store()
    try:
        for u in list_users(store.engine):
            units = ",".join(u["units"]) or "-"  # type: ignore[arg-type]
            click.echo(f"{u['username']:<24} {u['role']:<15} {units:<30} {'locked' if u['locked'] else ''}")
    finally:
        store.close()


@users.command("set-units")
@click.argument("username")
@click.argument("units", nargs=-1)
@handle_errors
def users_set_units(username: str, units: tuple[str, ...]) -> None:
    """Replace a user's care-team units."""
    from carecast.security.users import set_units

    store = _open_store()
    try:
        set_units(store.engine, username, units)
    finally:
        store.close()
    click.echo(f"{username}: {', '.join(units) or 'no units'}")


@main.group()
def tokens() -> None:
    """API bearer tokens (random, stored hashed, scoped, expiring)."""


@tokens.command("issue")
@click.argument("username")
@click.option("--name", required=True, help="What the token is for (e.g. the EHR's name).")
@click.option("--scope", "scopes", multiple=True, help="Permission the token may use (repeat); default: the role's.")
@click.option("--hours", default=24 * 30, show_default=True, help="Lifetime in hours.")
@handle_errors
def tokens_issue(username: str, name: str, scopes: tuple[str, ...], hours: float) -> None:
    """Issue a token for USERNAME; it is printed once and never stored in clear."""
    from sqlalchemy import select

    from carecast.errors import NotFoundError
    from carecast.security.permissions import ROLE_PERMISSIONS
    from carecast.security.tokens import issue_token
    from carecast.store import schema as S

    store = _open_store()
    try:
        with store.engine.connect() as conn:
            user = conn.execute(select(S.User.id, S.User.role).where(S.User.username == username)).first()
        if user is None:
            raise NotFoundError(f"no user {username}")
        granted = scopes or tuple(str(p) for p in ROLE_PERMISSIONS[user.role])
        token = issue_token(store.engine, int(user.id), name, granted, ttl_hours=hours)
    finally:
        store.close()
    click.echo(token)


@tokens.command("list")
@handle_errors
def tokens_list() -> None:
    """List tokens (never their values)."""
    from carecast.security.tokens import list_tokens

    store = _open_store()
    try:
        for t in list_tokens(store.engine):
            click.echo(f"#{t['id']} {t['user']:<20} {t['name']:<20} expires {t['expires_at']} "
                       f"{'revoked' if t['revoked'] else ''}\n    scopes: {t['scopes']}")
    finally:
        store.close()


@tokens.command("revoke")
@click.argument("token_id", type=int)
@handle_errors
def tokens_revoke(token_id: int) -> None:
    """Revoke a token by its id (from `carecast tokens list`)."""
    from carecast.security.tokens import revoke_token

    store = _open_store()
    try:
        revoke_token(store.engine, token_id)
    finally:
        store.close()
    click.echo(f"token #{token_id} revoked")


@main.group()
def audit() -> None:
    """The hash-chained audit trail."""


@audit.command("verify")
@handle_errors
def audit_verify() -> None:
    """Recompute the hash chain; exit 1 and name the first bad row if any row was changed or removed."""
    from carecast.security.audit import AuditLog

    store = _open_store()
    try:
        check = AuditLog.for_store(store.engine).verify()
    finally:
        store.close()
    if check.ok:
        click.echo(f"audit trail intact: {check.rows} rows")
        return
    click.secho(f"audit trail BROKEN at row {check.first_bad_id} (after {check.rows} good rows)", fg="red", err=True)
    sys.exit(ExitCode.ERROR)


@audit.command("export")
@click.option("--limit", default=1000, show_default=True)
@click.option("--fhir", is_flag=True, help="As a FHIR R4 Bundle of AuditEvent resources.")
@handle_errors
def audit_export(limit: int, fhir: bool) -> None:
    """Print recent audit rows as JSON (or FHIR AuditEvents). They hold no patient values."""
    from carecast.security.audit import AuditLog, as_fhir_audit_event

    store = _open_store()
    try:
        rows = AuditLog.for_store(store.engine).rows(limit=limit)
    finally:
        store.close()
    if fhir:
        _print_json({"resourceType": "Bundle", "type": "collection",
                     "entry": [{"resource": as_fhir_audit_event(r)} for r in rows]})
    else:
        _print_json(rows)


# -- CDS Hooks clients -------------------------------------------------------------------------------------------

@main.group()
def cds() -> None:
    """CDS Hooks: the EHR clients allowed to call the CDS services, by JWT issuer and public key."""


@cds.command("register-client")
@click.option("--iss", required=True, help="The issuer (`iss`) the EHR puts in its tokens.")
@click.option("--public-key", "public_key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The EHR's public key or certificate (PEM): EC P-256/P-384 or RSA >= 2048 bits.")
@click.option("--jwks", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Or a JWK Set file of public keys, each with a kid.")
@click.option("--kid", default=None, help="Key id of --public-key (default: its RFC 7638 thumbprint).")
@click.option("--audience", default=None,
              help="Public base URL the EHR calls CareCast at (pins `aud`); default: the URL requests arrive at.")
@handle_errors
def cds_register_client(iss: str, public_key: Path | None, jwks: Path | None, kid: str | None,
                        audience: str | None) -> None:
    """Register an EHR client, or add a key to one (a key with the same kid is replaced)."""
    from carecast.errors import InputError
    from carecast.security.cds_jwt import public_jwk_from_pem, public_jwks_from_json, register_client

    if public_key is not None and jwks is None:
        keys = [public_jwk_from_pem(public_key.read_bytes(), kid)]
    elif jwks is not None and public_key is None:
        keys = public_jwks_from_json(jwks.read_text(encoding="utf-8"))
    else:
        raise InputError("give exactly one of --public-key and --jwks")
    store = _open_store()
    try:
        client = register_client(store.engine, iss, keys, audience=audience)
    finally:
        store.close()
    click.echo(f"CDS client #{client.id} {client.iss}: key ids {', '.join(client.kids)}"
               + (f"; audience {client.audience}" if client.audience else ""))


@cds.command("list-clients")
@handle_errors
def cds_list_clients() -> None:
    """List registered EHR clients with their key ids."""
    from carecast.security.cds_jwt import list_clients

    store = _open_store()
    try:
        for c in list_clients(store.engine):
            click.echo(f"#{c.id} {c.iss}  keys: {', '.join(c.kids)}  audience: {c.audience or '(request URL)'}")
    finally:
        store.close()


@cds.command("remove-client")
@click.option("--iss", required=True)
@handle_errors
def cds_remove_client(iss: str) -> None:
    """Remove an EHR client: its tokens are refused from now on."""
    from carecast.errors import NotFoundError
    from carecast.security.cds_jwt import remove_client

    store = _open_store()
    try:
        if not remove_client(store.engine, iss):
            raise NotFoundError("no such CDS client")
    finally:
        store.close()
    click.echo("CDS client removed")


# -- population health -------------------------------------------------------------------------------------

@main.group()
def population() -> None:
    """Population health: cases, hospitalisations and deaths per 100,000 population by state."""


@population.command("report")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="PNG file for the four-panel figure; the table is written beside it (same name, .csv).")
@click.option("--csv", "csv_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Imported CSV of cumulative totals (State, Date, Total Cases, Total Deaths, "
                   "Total Hospitalizations, Population) instead of the stored data.")
@click.option("--codes", default=None,
              help="Stored data: comma-separated ICD-10 codes whose patients are cases [default: U07.1].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a summary.")
@handle_errors
def population_report(out: Path, csv_path: Path | None, codes: str | None, as_json: bool) -> None:
    """Rates per 100,000 by state, the OLS of death rate on case rate, a PNG figure and a CSV table.

    Exit codes: 0 written; 3 written, but some CSV rows were quarantined; 4 nothing to report.
    """
    from carecast.errors import InputError
    from carecast.population import (
        population_json,
        read_state_csv,
        report_from_counts,
        report_from_csv,
        write_figure,
        write_table,
    )

    if out.suffix.lower() != ".png":
        raise click.BadParameter("must name a .png file", param_hint="--out")
    if csv_path is not None and codes is not None:
        raise click.BadParameter("applies to the stored data, not to --csv", param_hint="--codes")
    if csv_path is not None:
        report = report_from_csv(read_state_csv(csv_path))
    else:
        from carecast.store.population import DEFAULT_CODES, state_counts

        code_list = [c.strip().upper() for c in codes.split(",") if c.strip()] if codes else list(DEFAULT_CODES)
        store = _open_store()
        try:
            report = report_from_counts(state_counts(store.engine, code_list), code_list)
        finally:
            store.close()
    for problem in report.problems[:20]:
        click.echo(f"quarantined: {report.label} {problem.describe()}", err=True)
    if len(report.problems) > 20:
        click.echo(f"quarantined: ... and {len(report.problems) - 20} more rows", err=True)
    if report.states == 0:
        raise InputError(f"nothing to report: no state with figures in {report.label}")
    out.parent.mkdir(parents=True, exist_ok=True)
    table_path = out.with_suffix(".csv")
    write_figure(report, out)
    write_table(report, table_path)
    if as_json:
        _print_json(population_json(report))
    else:
        click.echo(f"{report.states} states from {report.label}; populations: {report.population_source}")
        fit = report.fit
        click.echo(f"OLS deaths/100K on cases/100K: slope {fit.slope:.4g}, intercept {fit.intercept:.4g}, "
                   f"R² {fit.r_squared:.3f}, n {fit.n}" if fit else "OLS: too few states for a regression")
        for e in report.excluded:
            click.echo(f"left out: {e['state']} ({e['reason']})")
        if report.unknown_state:
            click.echo(f"patients without a state (not counted): {report.unknown_state}")
        click.echo(f"figure: {out}\ntable: {table_path}")
    if report.problems:
        sys.exit(ExitCode.PARTIAL)


# -- monitoring --------------------------------------------------------------------------------------------

_MONITORED_TASKS = ["deterioration_24h", "inhospital_mortality", "readmission_30d", "long_stay_7d"]


@main.group()
def monitor() -> None:
    """Is the model still right? Input drift and performance as outcomes arrive (docs/monitoring.md)."""


@monitor.command("drift")
@click.option("--task", type=click.Choice(_MONITORED_TASKS), required=True)
@click.option("--since", "since_hours", default=168.0, show_default=True, type=float,
              help="Hours of recent data, counted back from where the stored data end.")
@click.option("--model", default="champion", show_default=True, help="Version or alias whose card is the reference.")
@click.option("--all-features", is_flag=True, help="List every feature, not only those over a threshold.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@handle_errors
def monitor_drift(task: str, since_hours: float, model: str, all_features: bool, as_json: bool) -> None:
    """Per-feature PSI and missing share of recent data against the model card's reference.

    Exits 7 when a feature is over an alert threshold; warnings and too little data exit 0.
    """
    from carecast.monitoring.drift import ALERT_EXIT_CODE, check_drift

    store = _open_store()
    try:
        report = check_drift(store, _registry(), task, since_hours=since_hours, model=model)
    finally:
        store.close()
    if as_json:
        _print_json(report.to_dict(all_features=all_features))
    else:
        click.echo("\n".join(report.lines(all_features=all_features)))
    if report.alerted:
        sys.exit(ALERT_EXIT_CODE)


@monitor.command("performance")
@click.option("--task", type=click.Choice(_MONITORED_TASKS), required=True)
@click.option("--window-days", type=float, default=None, help="Length of each rolling window (default: thresholds).")
@click.option("--step-days", type=float, default=None, help="Days between window ends (default: thresholds).")
@click.option("--bootstrap", default=0, show_default=True, help="Bootstrap resamples for AUROC CIs (0: none).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@handle_errors
def monitor_performance(task: str, window_days: float | None, step_days: float | None, bootstrap: int,
                        as_json: bool) -> None:
    """Realised AUROC, calibration and PPV of stored predictions per model version, pending labels, subgroups.

    Exits 7 when an alert fires (a subgroup AUROC gap or observed/expected events out of bounds).
    """
    from dataclasses import replace

    from carecast.monitoring.drift import ALERT_EXIT_CODE
    from carecast.monitoring.performance import check_performance, default_thresholds

    th = default_thresholds()
    th = replace(th, window_days=window_days or th.window_days, step_days=step_days or th.step_days)
    store = _open_store()
    try:
        report = check_performance(store, _registry(), task, thresholds=th, n_boot=bootstrap)
    finally:
        store.close()
    if as_json:
        _print_json(report.to_dict())
    else:
        click.echo("\n".join(report.lines()))
    if report.status == "alert":
        sys.exit(ALERT_EXIT_CODE)


# -- retraining behind the promotion gates -------------------------------------------------------------------

@main.command()
@click.option("--task", default="deterioration_24h", show_default=True, help="The outcome task to retrain.")
@click.option("--holdout-fraction", default=0.25, show_default=True,
              help="Share of the latest admissions held out to compare champion and challenger.")
@click.option("--no-promote", is_flag=True,
              help="Record the gates' decision but leave the new model as challenger (shadow mode).")
@click.option("--every", "every_hours", type=float, default=None,
              help="Run now and then every HOURS in the foreground until Ctrl-C / SIGTERM.")
@click.option("--shadow-report", is_flag=True,
              help="Do not train: compare the champion's scores with the challenger's shadow scores.")
@click.option("--since-hours", type=float, default=None, help="--shadow-report: only scores of the last HOURS.")
@click.option("--seed", default=0, show_default=True)
@click.option("--bootstrap", default=200, show_default=True, help="Bootstrap resamples for the CIs.")
@handle_errors
def retrain(task: str, holdout_fraction: float, no_promote: bool, every_hours: float | None, shadow_report: bool,
            since_hours: float | None, seed: int, bootstrap: int) -> None:
    """Train a challenger on stored data and promote it only if the promotion gates pass.

    Champion and challenger are scored on the same holdout of the latest admissions (never seen by the
    challenger's training); the decision and one reason per gate are recorded in the registry and printed
    as JSON. A refused challenger stays challenger (scored in shadow). Exit 0 whether promoted or not.
    """
    if shadow_report:
        _shadow_report(task, since_hours, bootstrap, seed)
        return
    from carecast.jobs.retrain import run_retrain

    options: dict[str, Any] = {"holdout_fraction": holdout_fraction, "promote": not no_promote, "seed": seed,
                               "n_boot": bootstrap}

    def once() -> dict[str, Any]:
        store = _open_store()
        try:
            result = run_retrain(store, _registry(), task, progress=_progress_printer(), **options)
        finally:
            store.close()
        _print_json(result.to_dict())
        click.echo(f"{task}: challenger {result.version} {'promoted' if result.promoted else 'not promoted'}; "
                   f"champion {result.champion_after or '(none)'}", err=True)
        return result.to_dict()

    if every_hours is None:
        once()
        return
    _retrain_every(once, every_hours)


def _retrain_every(job: Callable[[], Any], hours: float) -> None:
    import signal
    import threading

    from carecast.jobs.retrain import RetrainScheduler

    if not hours > 0:
        raise click.UsageError("--every must be a positive number of hours")
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGTERM, signal.SIGINT)}
    scheduler = RetrainScheduler(job, interval_s=hours * 3600.0, first_after_s=0.0).start()
    try:
        while not stop.wait(1.0) and scheduler.running:
            pass
    finally:
        scheduler.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    click.echo(f"retraining schedule stopped after {scheduler.runs} run(s), {scheduler.failures} failed", err=True)


def _shadow_report(task: str, since_hours: float | None, bootstrap: int, seed: int) -> None:
    from datetime import UTC, datetime

    from carecast.errors import NotFoundError
    from carecast.scoring.shadow import compare_shadow

    aliases = _registry().aliases(task)
    if not aliases.get("champion") or not aliases.get("challenger"):
        raise NotFoundError(f"{task} needs a champion and a challenger for a shadow report")
    since = datetime.now(UTC) - timedelta(hours=since_hours) if since_hours else None
    store = _open_store()
    try:
        found = compare_shadow(store, task, aliases["champion"], aliases["challenger"], since=since, n_boot=bootstrap,
                               seed=seed)
    finally:
        store.close()
    _print_json(found.to_dict())


# -- de-identified export, backups ----------------------------------------------------------------------------

@main.command("export")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--deidentify", is_flag=True, help="Required: the only export is a HIPAA Safe Harbor one.")
@click.option("--dates", type=click.Choice(["year", "shift"]), default="year", show_default=True,
              help="Keep only the year of each date, or shift each patient's dates by a random number of days.")
@click.option("--max-shift-days", default=365, show_default=True, type=click.IntRange(1, 3650),
              help="--dates shift: the largest shift, in days either way.")
@handle_errors
def export_cmd(out_dir: Path, deidentify: bool, dates: str, max_shift_days: int) -> None:
    """Write a de-identified training export (CSV per table and manifest.json) into OUT_DIR (new or empty)."""
    from carecast.security.deid import export_deidentified

    if not deidentify:
        raise click.UsageError("only de-identified exports exist: add --deidentify")
    store = _open_store()
    try:
        result = export_deidentified(store.engine, store.keyring, out_dir, dates=dates, max_shift_days=max_shift_days)
    finally:
        store.close()
    for name, info in result.manifest["tables"].items():
        click.echo(f"{name}: {info['rows']} rows")
    click.echo(f"de-identified export written to {out_dir} (dates: {dates}); see manifest.json")


@main.group()
def backup() -> None:
    """Backups of the database, the model registry and the keyring, and their restore."""


@backup.command("create")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--passphrase-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="File holding the passphrase that seals the keyring (else prompted for).")
@click.option("--without-keyring", is_flag=True, help="Leave the keyring out (keep it safe elsewhere).")
@handle_errors
def backup_create(out: Path, passphrase_file: Path | None, without_keyring: bool) -> None:
    """Write a backup file OUT (mode 0600): database, model registry, sealed keyring, manifest."""
    from carecast.store.backup import create_backup, describe, keyring_needs_seal

    settings = _settings()
    passphrase = None
    if keyring_needs_seal(settings, include_keyring=not without_keyring):
        passphrase = _backup_passphrase(passphrase_file, confirm=True)
    store = _open_store()
    try:
        info = create_backup(settings, store.engine, out, passphrase=passphrase, include_keyring=not without_keyring)
    finally:
        store.close()
    click.echo(describe(info.manifest))
    click.echo(f"backup written to {info.path}")


@backup.command("restore")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--passphrase-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="File holding the passphrase of the sealed keyring (else prompted for).")
@click.option("--skip-keyring", is_flag=True, help="Keep the current key file.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@handle_errors
def backup_restore(file: Path, passphrase_file: Path | None, skip_keyring: bool, yes: bool) -> None:
    """Replace the database, model registry and key file with FILE's, then check every table's hash.

    Stop every other CareCast process first.
    """
    from carecast.store import Store
    from carecast.store.backup import describe, read_manifest, restore_backup
    from carecast.store.db import make_engine

    settings = _settings()
    manifest = read_manifest(file)
    click.echo(describe(manifest))
    if not yes:
        click.confirm("Replace the current database with this backup?", abort=True)
    passphrase = None
    if not skip_keyring and "sealed" in str(manifest.get("keyring")):
        passphrase = _backup_passphrase(passphrase_file, confirm=False)
    engine = make_engine(settings.database_url)  # not Store.open: the key may be the one being restored
    try:
        result = restore_backup(settings, engine, file, passphrase=passphrase, restore_keyring=not skip_keyring)
    finally:
        engine.dispose()
    Store.open(settings, migrate=False).close()  # the restored key must open the restored store
    click.echo(f"restored {len(result.tables)} tables, {sum(t['rows'] for t in result.tables.values())} rows, "
               f"hashes equal to the backup's; models: {result.models}; keyring: {result.keyring}")


if __name__ == "__main__":  # pragma: no cover
    main()
