"""The session history's SQLite file: schema and its upgrades, durable writes, queries.

Durability: WAL journal, ``synchronous=FULL``, one transaction per write. Not for
concurrent use: :class:`surplus.history.History` calls it from one worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Iterator, Sequence

from .sessions import RowWrite, SessionRecord, StoredRow

log = logging.getLogger("surplus.history")

#: ``PRAGMA user_version`` of the schema below; a file with a higher one is refused.
SCHEMA_VERSION = 3
_SCHEMA = (
    """CREATE TABLE sessions (
        id INTEGER PRIMARY KEY,
        charger_id TEXT NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL,
        updated_at REAL NOT NULL,
        energy_wh REAL NOT NULL,
        sun_wh REAL NOT NULL,
        unmetered_wh REAL NOT NULL,
        max_current_a REAL NOT NULL,
        phases TEXT NOT NULL,
        modes TEXT NOT NULL,
        box_sessions_total INTEGER,
        end_reason TEXT,
        box_energy_start_wh REAL,
        car_full INTEGER
    )""",
    "CREATE INDEX sessions_by_start ON sessions (started_at DESC, id DESC)",
    # At most one open session per charger.
    "CREATE UNIQUE INDEX sessions_open ON sessions (charger_id) WHERE ended_at IS NULL",
)
#: From each older schema version to the next.
_MIGRATIONS = {
    1: ("ALTER TABLE sessions ADD COLUMN box_energy_start_wh REAL",),
    2: ("ALTER TABLE sessions ADD COLUMN car_full INTEGER",),
}
_COLUMNS = (
    "charger_id",
    "started_at",
    "ended_at",
    "updated_at",
    "energy_wh",
    "sun_wh",
    "unmetered_wh",
    "max_current_a",
    "phases",
    "modes",
    "box_sessions_total",
    "end_reason",
    "box_energy_start_wh",
    "car_full",
)


class HistoryError(ValueError):
    """The history file cannot be used; the message is one line naming the path."""


def _split(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


class SessionStore:
    """The SQLite file. Not for concurrent use: :class:`History` calls it from one worker thread."""

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    def open(cls, path: str) -> SessionStore:
        """Open (creating the directory, file and schema) or raise :class:`HistoryError` (one line)."""
        where = f"history.path {path}"
        full = os.path.abspath(os.path.expanduser(path))
        folder = os.path.dirname(full)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            why = (
                "a file is in the way"
                if isinstance(exc, FileExistsError | NotADirectoryError)
                else exc.strerror
            )
            raise HistoryError(f"{where}: cannot create its directory {folder}: {why or exc}") from None
        if os.path.isdir(full):
            raise HistoryError(f"{where}: is a directory; name a file")
        probe = full if os.path.exists(full) else os.path.dirname(full)
        if not os.access(probe, os.W_OK):
            raise HistoryError(f"{where}: not writable by this user")
        try:
            conn = sqlite3.connect(full, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise HistoryError(f"{where}: cannot open: {exc}") from None
        store = cls(conn, full)
        try:
            store._prepare()
        except HistoryError as exc:
            conn.close()
            raise HistoryError(f"{where}: {exc}") from None
        except sqlite3.Error as exc:
            conn.close()
            raise HistoryError(f"{where}: {exc}") from None
        return store

    def _prepare(self) -> None:
        version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise HistoryError(
                f"schema version {version} is newer than this surplus knows ({SCHEMA_VERSION}):"
                " upgrade surplus or use another file"
            )
        mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("history: %s runs in %s journal mode, not WAL", self.path, mode)
        self._conn.execute("PRAGMA synchronous=FULL")
        if version == SCHEMA_VERSION:
            return
        if version:
            with self._transaction():
                for step in range(version, SCHEMA_VERSION):
                    for statement in _MIGRATIONS[step]:
                        self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            log.info("history: %s upgraded from schema version %d", self.path, version)
            return
        tables = self._conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        if tables:
            raise HistoryError("not a surplus session history (it has other tables); use another file")
        with self._transaction():
            for statement in _SCHEMA:
                self._conn.execute(statement)
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def write(self, writes: Sequence[RowWrite]) -> None:
        """Insert or update each row, all in one transaction."""
        with self._transaction():
            for w in writes:
                if w.live.row_id is None:
                    names = ", ".join(_COLUMNS)
                    marks = ", ".join("?" * len(_COLUMNS))
                    cur = self._conn.execute(f"INSERT INTO sessions ({names}) VALUES ({marks})", w.values)
                    w.live.row_id = cur.lastrowid
                else:
                    sets = ", ".join(f"{c} = ?" for c in _COLUMNS)
                    self._conn.execute(f"UPDATE sessions SET {sets} WHERE id = ?", (*w.values, w.live.row_id))

    def _records(self, where: str, args: Sequence[object]) -> list[StoredRow]:
        rows = self._conn.execute(
            f"SELECT id, {', '.join(_COLUMNS)} FROM sessions {where}", tuple(args)
        ).fetchall()
        out = []
        for row in rows:
            rid, cid, start, end, updated, energy, sun, unmetered, max_a = row[:9]
            phases, modes, box, reason, at, full = row[9:]
            rec = SessionRecord(
                id=int(rid),
                charger_id=str(cid),
                started_at=float(start),
                ended_at=None if end is None else float(end),
                updated_at=float(updated),
                energy_wh=float(energy),
                sun_wh=float(sun),
                unmetered_wh=float(unmetered),
                max_current_a=float(max_a),
                phases=tuple(int(p) for p in _split(phases)),
                modes=tuple(_split(modes)),
                end_reason=reason,
                car_full=None if full is None else bool(full),
            )
            out.append(StoredRow(rec, None if box is None else int(box), None if at is None else float(at)))
        return out

    def open_rows(self) -> list[StoredRow]:
        """Sessions without an end, with what the box's counters showed for them."""
        return self._records("WHERE ended_at IS NULL ORDER BY id", ())

    def last_ends(self) -> dict[str, tuple[float, float | None]]:
        """Per charger, the end of its latest ended session (time, box counter if known)."""
        rows = self._conn.execute(
            "SELECT charger_id, ended_at, box_energy_start_wh + energy_wh FROM sessions s"
            " WHERE ended_at = (SELECT max(ended_at) FROM sessions t WHERE t.charger_id = s.charger_id)"
            " ORDER BY id"
        ).fetchall()
        return {str(cid): (float(end), None if wh is None else float(wh)) for cid, end, wh in rows}

    def recent(self, charger_id: str | None, limit: int) -> list[SessionRecord]:
        """The newest ``limit`` sessions (of one charger, or all), newest first."""
        if charger_id is None:
            rows = self._records("ORDER BY started_at DESC, id DESC LIMIT ?", (limit,))
        else:
            rows = self._records(
                "WHERE charger_id = ? ORDER BY started_at DESC, id DESC LIMIT ?", (charger_id, limit)
            )
        return [r.record for r in rows]

    def past_sessions(self, limit: int) -> dict[str, list[SessionRecord]]:
        """Per charger, its newest ``limit`` ended sessions in which the car drew, oldest first."""
        rows = self._records(
            "WHERE ended_at IS NOT NULL AND car_full IS NOT NULL ORDER BY ended_at DESC, id DESC", ()
        )
        out: dict[str, list[SessionRecord]] = {}
        for row in rows:
            kept = out.setdefault(row.record.charger_id, [])
            if len(kept) < limit:
                kept.append(row.record)
        return {cid: kept[::-1] for cid, kept in out.items()}

    def close(self) -> None:
        self._conn.close()
