"""The durable scoring queue: "this patient has new data" jobs, claimed by workers under a lease.

Two implementations of one Protocol, `ScoreQueue`:

- `DatabaseQueue` keeps jobs in the store's `score_jobs` table (the embedded SQLite default, and PostgreSQL).
- `RedisQueue` keeps them in Redis (several hosts, high reading rates).

Both give the same guarantees:

- Durable: a job stays until a worker completes it (or it fails `max_attempts` times). A worker killed
  mid-job loses its lease when the lease expires, and the job is claimed again.
- Exclusive: a claim leases each job to one worker; two workers never hold the same live lease.
- Coalescing: a patient with a job still waiting (never claimed) gets no second job; the waiting one keeps
  the latest data time. A patient whose job is already being worked on gets a new one, so data arriving
  during scoring is scored too. Scoring is idempotent, so a job handled twice costs time, not correctness.
- No patient data in the queue beyond the internal patient id and a data time; error texts are the
  caller's responsibility (see `fail`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import Engine, and_, delete, func, insert, or_, select, update

from carecast.config import Settings
from carecast.store import schema as S
from carecast.store.db import make_engine

DEFAULT_MAX_ATTEMPTS = 5
_IN_CHUNK = 500
_ERROR_LENGTH = 255


@dataclass(frozen=True, slots=True)
class Job:
    """One claimed job: score this patient (data time: the latest reading that caused it, if known)."""

    id: str
    patient_id: int
    data_time: datetime | None
    attempts: int
    enqueued_at: datetime | None = None


@runtime_checkable
class ScoreQueue(Protocol):
    def enqueue(self, patient_ids: Iterable[int], data_time: datetime | None) -> None:
        """Queue the patients for scoring (coalesced with their waiting job, if any)."""

    def claim(self, worker_id: str, limit: int, lease_s: float) -> list[Job]:
        """Lease up to `limit` jobs to `worker_id` for `lease_s` seconds, oldest first."""

    def complete(self, job_ids: Iterable[str]) -> None:
        """The jobs are done; they leave the queue."""

    def fail(self, job_id: str, error: str) -> None:
        """The job failed: record `error` (a short text with no patient data) and retry it later with
        backoff, or give it up after the queue's max attempts."""

    def depth(self) -> int:
        """Jobs not yet completed (waiting or leased)."""

    def purge(self, older_than: timedelta = timedelta(hours=1)) -> int:
        """Forget finished jobs older than `older_than` (where finished jobs are kept); returns how many."""


def backoff_s(attempts: int) -> float:
    """Seconds before a failed job is tried again: 1, 2, 4 ... capped at 5 minutes."""
    return float(min(2 ** max(attempts - 1, 0), 300))


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _unique(patient_ids: Iterable[int]) -> list[int]:
    return sorted({int(p) for p in patient_ids})


# -- the database queue ---------------------------------------------------------------------------------------

class DatabaseQueue:
    """Jobs as rows of `score_jobs`. A row is waiting while `leased_by` is NULL, leased while `lease_until`
    is in the future, claimable again once the lease has run out, and finished when `done_at` is set."""

    def __init__(self, engine: Engine, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 clock: Callable[[], datetime] = _utcnow) -> None:
        self.engine = engine
        self.max_attempts = max_attempts
        self.clock = clock
        self._t = S.table(S.ScoreJob)

    def enqueue(self, patient_ids: Iterable[int], data_time: datetime | None) -> None:
        pids = _unique(patient_ids)
        if not pids:
            return
        t, now = self._t, self.clock()
        with self.engine.begin() as conn:
            waiting: dict[int, tuple[int, datetime | None]] = {}
            for i in range(0, len(pids), _IN_CHUNK):
                rows = conn.execute(select(t.c.id, t.c.patient_id, t.c.data_time).where(
                    t.c.patient_id.in_(pids[i : i + _IN_CHUNK]), t.c.done_at.is_(None), t.c.leased_by.is_(None)))
                for r in rows:
                    waiting.setdefault(int(r.patient_id), (int(r.id), r.data_time))
            later = [jid for jid, known in waiting.values()
                     if data_time is not None and (known is None or known < data_time)]
            if later:
                conn.execute(update(t).where(t.c.id.in_(later)).values(data_time=data_time))
            new = [p for p in pids if p not in waiting]
            if new:
                conn.execute(insert(t), [{"patient_id": p, "enqueued_at": now, "data_time": data_time, "attempts": 0}
                                         for p in new])

    def claim(self, worker_id: str, limit: int, lease_s: float) -> list[Job]:
        if limit <= 0:
            return []
        t, now = self._t, self.clock()
        until = now + timedelta(seconds=lease_s)
        claimable = and_(t.c.done_at.is_(None), or_(t.c.lease_until.is_(None), t.c.lease_until < now))
        # An idle worker polls several times a second: a read finds the empty queue without a write
        # transaction (on SQLite, each one would take the single write lock the API's audit commits need).
        with self.engine.connect() as conn:
            if conn.execute(select(t.c.id).where(claimable).limit(1)).first() is None:
                return []
        candidates = select(t.c.id).where(claimable).order_by(t.c.enqueued_at, t.c.id).limit(limit)
        # One statement: the re-checked condition makes a row claimed by someone else in the meantime
        # drop out, and RETURNING names exactly the rows this worker leased.
        if self.engine.dialect.name == "postgresql":
            # Rows other workers are claiming are skipped, not waited for. The pick is a MATERIALIZED CTE:
            # as an IN (subquery) the planner may run it more than once, and each run under SKIP LOCKED
            # can pick other rows, leasing more than `limit`.
            picked = candidates.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
            stmt = update(t).where(t.c.id == picked.c.id, claimable)
        else:  # SQLite runs one writer at a time; the statement is atomic
            stmt = update(t).where(t.c.id.in_(candidates.scalar_subquery()), claimable)
        stmt = (stmt.values(leased_by=worker_id[:64], lease_until=until, attempts=t.c.attempts + 1)
                .returning(t.c.id, t.c.patient_id, t.c.data_time, t.c.attempts, t.c.enqueued_at))
        with self.engine.begin() as conn:
            rows = sorted(conn.execute(stmt).all(), key=lambda r: (r.enqueued_at, r.id))
        return [Job(id=str(r.id), patient_id=int(r.patient_id), data_time=r.data_time, attempts=int(r.attempts),
                    enqueued_at=r.enqueued_at) for r in rows]

    def complete(self, job_ids: Iterable[str]) -> None:
        ids = sorted({int(j) for j in job_ids})
        if not ids:
            return
        t, now = self._t, self.clock()
        with self.engine.begin() as conn:
            for i in range(0, len(ids), _IN_CHUNK):
                conn.execute(update(t).where(t.c.id.in_(ids[i : i + _IN_CHUNK]), t.c.done_at.is_(None))
                             .values(done_at=now, lease_until=None, error=None))

    def fail(self, job_id: str, error: str) -> None:
        t, now = self._t, self.clock()
        with self.engine.begin() as conn:
            attempts = conn.execute(select(t.c.attempts).where(t.c.id == int(job_id))).scalar_one_or_none()
            if attempts is None:
                return
            values: dict[str, Any] = {"error": error[:_ERROR_LENGTH]}
            if attempts >= self.max_attempts:
                values["done_at"] = now  # given up: kept with its error for the operator
            else:
                values["lease_until"] = now + timedelta(seconds=backoff_s(attempts))
            conn.execute(update(t).where(t.c.id == int(job_id), t.c.done_at.is_(None)).values(**values))

    def depth(self) -> int:
        t = self._t
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(t).where(t.c.done_at.is_(None))).scalar_one())

    def purge(self, older_than: timedelta = timedelta(hours=1)) -> int:
        t = self._t
        with self.engine.begin() as conn:
            result = conn.execute(delete(t).where(t.c.done_at.is_not(None), t.c.done_at < self.clock() - older_than))
        return int(result.rowcount or 0)

    def failed(self, limit: int = 100) -> list[tuple[str, int, str]]:
        """Jobs given up after max attempts: (job id, attempts, error), newest first."""
        t = self._t
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.c.id, t.c.attempts, t.c.error).where(
                t.c.done_at.is_not(None), t.c.error.is_not(None)).order_by(t.c.done_at.desc()).limit(limit)).all()
        return [(str(r.id), int(r.attempts), str(r.error)) for r in rows]


# -- the Redis queue ------------------------------------------------------------------------------------------

# Keys under the prefix:  waiting (list of patient ids, oldest first), waiting_time (hash patient -> data
# time, the coalescing index), seq (job ids), job:<id> (hash), leases (sorted set job id -> lease end, ms),
# dead (list of given-up jobs, capped). Every operation is one Lua script, so it is atomic on the server,
# and lease times come from the server's clock, so hosts need not agree on the time.

_LUA_NOW = "local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)"

_ENQUEUE = """
local waiting, times = KEYS[1], KEYS[2]
local data_time = ARGV[1]
for i = 2, #ARGV do
  local pid = ARGV[i]
  if redis.call('HSETNX', times, pid, data_time) == 1 then
    redis.call('RPUSH', waiting, pid)
  elseif data_time ~= '' then
    local known = redis.call('HGET', times, pid)
    if known == '' or known < data_time then redis.call('HSET', times, pid, data_time) end
  end
end
return 0
"""

_CLAIM = _LUA_NOW + """
local waiting, times, seq, leases = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local prefix, worker, limit, lease_ms = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
-- leases that ran out first (their worker died or gave the job back for a retry), then waiting patients
local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(expired) do
  local key = prefix .. 'job:' .. id
  redis.call('ZADD', leases, now + lease_ms, id)
  redis.call('HSET', key, 'leased_by', worker)
  local attempts = redis.call('HINCRBY', key, 'attempts', 1)
  local f = redis.call('HMGET', key, 'patient_id', 'data_time', 'enqueued_at')
  table.insert(out, {id, f[1], f[2] or '', attempts, f[3] or ''})
end
while #out < limit do
  local pid = redis.call('LPOP', waiting)
  if not pid then break end
  local data_time = redis.call('HGET', times, pid) or ''
  redis.call('HDEL', times, pid)
  local id = tostring(redis.call('INCR', seq))
  redis.call('HSET', prefix .. 'job:' .. id, 'patient_id', pid, 'data_time', data_time, 'attempts', 1,
             'leased_by', worker, 'enqueued_at', tostring(now))
  redis.call('ZADD', leases, now + lease_ms, id)
  table.insert(out, {id, pid, data_time, 1, tostring(now)})
end
return out
"""

_COMPLETE = """
local leases, prefix = KEYS[1], ARGV[1]
for i = 2, #ARGV do
  redis.call('ZREM', leases, ARGV[i])
  redis.call('DEL', prefix .. 'job:' .. ARGV[i])
end
return 0
"""

_FAIL = _LUA_NOW + """
local leases, dead = KEYS[1], KEYS[2]
local prefix, id, err, max_attempts = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local key = prefix .. 'job:' .. id
local attempts = tonumber(redis.call('HGET', key, 'attempts'))
if not attempts then return 0 end
if attempts >= max_attempts then
  redis.call('ZREM', leases, id)
  redis.call('LPUSH', dead, cjson.encode({id = id, attempts = attempts, error = err}))
  redis.call('LTRIM', dead, 0, 999)
  redis.call('DEL', key)
  return 2
end
redis.call('HSET', key, 'error', err)
local delay = math.min(2 ^ math.max(attempts - 1, 0), 300) * 1000
redis.call('ZADD', leases, now + delay, id)
return 1
"""


class RedisQueue:
    """Jobs in Redis: a list of waiting patients (coalesced by a hash), leased jobs in a sorted set by lease
    end. Durable as far as the Redis server persists (enable AOF in production)."""

    def __init__(self, url: str, *, prefix: str = "carecast:score:", max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 client: Any | None = None) -> None:
        import redis

        self.client = client if client is not None else redis.Redis.from_url(url)
        self.prefix = prefix
        self.max_attempts = max_attempts
        self._keys = {name: prefix + name for name in ("waiting", "waiting_time", "seq", "leases", "dead")}
        self._enqueue = self.client.register_script(_ENQUEUE)
        self._claim = self.client.register_script(_CLAIM)
        self._complete = self.client.register_script(_COMPLETE)
        self._fail = self.client.register_script(_FAIL)

    def enqueue(self, patient_ids: Iterable[int], data_time: datetime | None) -> None:
        pids = _unique(patient_ids)
        if pids:
            stamp = "" if data_time is None else data_time.astimezone(UTC).isoformat(timespec="microseconds")
            self._enqueue(keys=[self._keys["waiting"], self._keys["waiting_time"]], args=[stamp, *pids])

    def claim(self, worker_id: str, limit: int, lease_s: float) -> list[Job]:
        if limit <= 0:
            return []
        k = self._keys
        rows = self._claim(keys=[k["waiting"], k["waiting_time"], k["seq"], k["leases"]],
                           args=[self.prefix, worker_id[:64], int(limit), max(1, round(lease_s * 1000))])
        return [Job(id=_text(r[0]), patient_id=int(r[1]), data_time=_parse_time(_text(r[2])), attempts=int(r[3]),
                    enqueued_at=_from_ms(_text(r[4]))) for r in rows]

    def complete(self, job_ids: Iterable[str]) -> None:
        ids = [str(j) for j in job_ids]
        if ids:
            self._complete(keys=[self._keys["leases"]], args=[self.prefix, *ids])

    def fail(self, job_id: str, error: str) -> None:
        self._fail(keys=[self._keys["leases"], self._keys["dead"]],
                   args=[self.prefix, str(job_id), error[:_ERROR_LENGTH], self.max_attempts])

    def depth(self) -> int:
        pipe = self.client.pipeline(transaction=False)
        pipe.llen(self._keys["waiting"])
        pipe.zcard(self._keys["leases"])
        waiting, leased = pipe.execute()
        return int(waiting) + int(leased)

    def purge(self, older_than: timedelta = timedelta(hours=1)) -> int:
        return 0  # completed jobs are deleted at once; given-up ones are kept in a capped list

    def failed(self, limit: int = 100) -> list[tuple[str, int, str]]:
        """Jobs given up after max attempts: (job id, attempts, error), newest first."""
        out = []
        for raw in self.client.lrange(self._keys["dead"], 0, limit - 1):
            item = json.loads(raw)
            out.append((str(item["id"]), int(item["attempts"]), str(item["error"])))
        return out

    def clear(self) -> None:
        """Delete every key under the prefix (tests, and resetting a demo)."""
        keys = list(self.client.scan_iter(match=self.prefix + "*", count=500))
        for i in range(0, len(keys), 500):
            self.client.delete(*keys[i : i + 500])

    def close(self) -> None:
        self.client.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _parse_time(text: str) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _from_ms(text: str) -> datetime | None:
    return datetime.fromtimestamp(int(text) / 1000, UTC) if text else None


def make_queue(target: Settings | str | Engine, *, engine: Engine | None = None) -> ScoreQueue:
    """A queue for a URL ("redis://..." or "rediss://..." -> RedisQueue; a database URL -> DatabaseQueue),
    an Engine, or Settings (their `queue_url` when they have one, else the store's database). Pass the
    store's `engine` to share its connection pool."""
    url: str | None
    if isinstance(target, Engine):
        return DatabaseQueue(target)
    if isinstance(target, Settings):
        url = getattr(target, "queue_url", None) or None
        if url is None:
            return DatabaseQueue(engine if engine is not None else make_engine(target.database_url))
    else:
        url = target
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisQueue(url)
    return DatabaseQueue(engine if engine is not None else make_engine(url))


def new_worker_id() -> str:
    """A worker id unique across hosts and restarts."""
    return f"w-{uuid.uuid4().hex[:12]}"
