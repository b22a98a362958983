/**
 * Reads a migration log (docs/migration-log.md) and refuses one it cannot
 * trust: not SQLite, not a migration log, another version, truncated or
 * damaged (SQLite's own check), changed after it was written (the digest
 * chain of log-schema.ts), or holding an event that breaks the format's
 * rules. Every refusal is a MigrationLogError naming the reason and, where
 * there is one, the first bad event.
 *
 * A log without an `end` event is valid: it is what a crashed migration
 * leaves, every round up to the last one finished.
 */
import { existsSync } from 'node:fs';
import Database from 'better-sqlite3';
import type { PageRange } from '../common/ranges.js';
import { checkEvents, type LogEvent, type LogMeta } from './log-events.js';
import {
  CHAINED_TABLES,
  COLUMNS,
  CommitDigest,
  type CommitRow,
  type ConversionRow,
  type EventRow,
  LOG_APPLICATION_ID,
  LOG_MAGIC,
  LOG_VERSION,
  MigrationLogError,
  metaDigest,
  type PageRunRow,
  type StateRow,
} from './log-schema.js';

export interface LogContents {
  meta: LogMeta;
  events: LogEvent[];
  conversions: ConversionRow[];
  /** Number of transactions the writer committed after creating the file. */
  commits: number;
  /** Whether the run reached its `end` event (false: it crashed or was killed). */
  complete: boolean;
}

export class MigrationLogReader {
  private constructor(
    readonly path: string,
    private readonly db: Database.Database,
    readonly contents: LogContents,
  ) {}

  /** Opens and fully checks the log at `path`; throws MigrationLogError when it cannot be trusted. */
  static open(path: string): MigrationLogReader {
    if (!existsSync(path))
      throw new MigrationLogError(path, 'missing', 'no such file; pass the --log file of a migration');
    let db: Database.Database | undefined;
    try {
      db = new Database(path, { readonly: true, fileMustExist: true });
      db.pragma('schema_version'); // reads the header: a non-SQLite file fails here
      return new MigrationLogReader(path, db, readChecked(path, db));
    } catch (err) {
      db?.close();
      throw classify(path, err);
    }
  }

  get meta(): LogMeta {
    return this.contents.meta;
  }

  get events(): LogEvent[] {
    return this.contents.events;
  }

  /** A stored state (e.g. `initial`, `final`, `guest-cbits-at-pause`) as bytes, or undefined. */
  state(name: string): { format: string; bytes: Buffer } | undefined {
    const r = this.db
      .prepare('SELECT format, bytes FROM states WHERE name = ? ORDER BY id DESC LIMIT 1')
      .get(name) as { format: string; bytes: Buffer } | undefined;
    return r;
  }

  /** Every corrupted page the verification listed, as runs (empty when none or not verified yet). */
  corrupted(): PageRange[] {
    const v = this.events.find((e) => e.kind === 'verification');
    return v ? v.runs.map((r) => ({ gfn: r.gfn, npages: r.npages })) : [];
  }

  close(): void {
    this.db.close();
  }
}

/** SQLite's own errors as the log problem they mean. */
function classify(path: string, err: unknown): Error {
  if (err instanceof MigrationLogError) return err;
  const code = (err as { code?: string }).code ?? '';
  const message = (err as Error).message;
  if (code.startsWith('SQLITE_NOTADB'))
    return new MigrationLogError(path, 'not-sqlite', `not a SQLite database (${message})`, undefined, {
      cause: err,
    });
  if (code.startsWith('SQLITE_CORRUPT') || code.startsWith('SQLITE_IOERR'))
    return new MigrationLogError(
      path,
      'damaged',
      `the file is truncated or damaged (${message})`,
      undefined,
      {
        cause: err,
      },
    );
  return err as Error;
}

function readChecked(path: string, db: Database.Database): LogContents {
  const appId = db.pragma('application_id', { simple: true }) as number;
  const hasMeta = db.prepare("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'meta'").get();
  if (appId !== LOG_APPLICATION_ID) {
    throw new MigrationLogError(
      path,
      'not-a-log',
      `not a sevtrack migration log (SQLite application_id 0x${appId.toString(16)}, expected 0x${LOG_APPLICATION_ID.toString(16)} "SVML")`,
    );
  }
  const userVersion = db.pragma('user_version', { simple: true }) as number;
  if (!hasMeta) {
    throw new MigrationLogError(
      path,
      userVersion < LOG_VERSION ? 'older-version' : 'not-a-log',
      userVersion < LOG_VERSION
        ? `migration log version ${userVersion} predates the versioned format (this sevtrack reads version ${LOG_VERSION}); re-run the migration with --log`
        : 'a migration log without its meta table',
    );
  }
  const meta = new Map(
    (db.prepare('SELECT key, value FROM meta').all() as { key: string; value: string }[]).map((r) => [
      r.key,
      r.value,
    ]),
  );
  if (meta.get('magic') !== LOG_MAGIC)
    throw new MigrationLogError(
      path,
      'not-a-log',
      `meta.magic is ${JSON.stringify(meta.get('magic'))}, expected "${LOG_MAGIC}"`,
    );
  const version = Number(meta.get('version'));
  if (version !== userVersion || !Number.isInteger(version))
    throw new MigrationLogError(
      path,
      'tampered',
      `meta.version ${meta.get('version')} disagrees with user_version ${userVersion}`,
    );
  if (version > LOG_VERSION)
    throw new MigrationLogError(
      path,
      'newer-version',
      `migration log version ${version} is newer than this sevtrack reads (${LOG_VERSION}); upgrade sevtrack`,
    );
  if (version < LOG_VERSION)
    throw new MigrationLogError(
      path,
      'older-version',
      `migration log version ${version} is older than this sevtrack reads (${LOG_VERSION})`,
    );
  const check = db.pragma('quick_check', { simple: true }) as string;
  if (check !== 'ok')
    throw new MigrationLogError(path, 'damaged', `the file is damaged (SQLite quick_check: ${check})`);

  const rows = {
    events: db.prepare('SELECT * FROM events ORDER BY id').all() as EventRow[],
    page_runs: db.prepare('SELECT * FROM page_runs ORDER BY id').all() as PageRunRow[],
    conversions: db.prepare('SELECT * FROM conversions ORDER BY id').all() as ConversionRow[],
    states: db.prepare('SELECT * FROM states ORDER BY id').all() as StateRow[],
  };
  const commits = db.prepare('SELECT * FROM commits ORDER BY n').all() as CommitRow[];
  checkChain(path, metaDigest(meta), commits, rows);
  const parsedMeta = parseMeta(path, meta);
  const events = checkEvents(path, parsedMeta, rows.events, rows.page_runs, rows.states, rows.conversions);
  return {
    meta: parsedMeta,
    events,
    conversions: rows.conversions,
    commits: commits.length - 1,
    complete: events.at(-1)?.kind === 'end',
  };
}

function parseMeta(path: string, meta: Map<string, string>): LogMeta {
  const need = (k: string) => {
    const v = meta.get(k);
    if (v === undefined) throw new MigrationLogError(path, 'tampered', `meta.${k} is missing`);
    return v;
  };
  const role = need('role');
  if (role !== 'source' && role !== 'destination')
    throw new MigrationLogError(
      path,
      'tampered',
      `meta.role is ${JSON.stringify(role)}, expected "source" or "destination"`,
    );
  return {
    version: Number(need('version')),
    role,
    npages: Number(need('npages')),
    vcpus: Number(need('vcpus')),
    protocol: need('protocol'),
    verify: need('verify'),
    startedAt: need('started_at'),
    params: JSON.parse(need('params')) as Record<string, unknown>,
  };
}

type Rows = {
  events: EventRow[];
  page_runs: PageRunRow[];
  conversions: ConversionRow[];
  states: StateRow[];
};

/** Recomputes the digest chain over every row; throws on the first commit that does not match. */
function checkChain(path: string, first: Buffer, commits: CommitRow[], rows: Rows): void {
  if (commits.length === 0 || commits[0].n !== 0 || !Buffer.from(commits[0].digest).equals(first))
    throw new MigrationLogError(
      path,
      'tampered',
      'the meta table does not match the first commit digest (meta changed after creation)',
    );
  const from = { events: 0, page_runs: 0, conversions: 0, states: 0 };
  const index = { events: 0, page_runs: 0, conversions: 0, states: 0 };
  let previous: Uint8Array = first;
  for (let c = 1; c < commits.length; c++) {
    const commit = commits[c];
    const firstEvent = index.events < rows.events.length ? rows.events[index.events] : undefined;
    const where = firstEvent
      ? ` (events ${from.events + 1}-${commit.events_to}; first: #${firstEvent.id} ${firstEvent.kind} round ${firstEvent.round})`
      : '';
    if (commit.n !== c)
      throw new MigrationLogError(
        path,
        'tampered',
        `commit ${c} is missing (found commit ${commit.n} in its place)`,
        firstEvent?.id,
      );
    const d = new CommitDigest(previous);
    for (const t of CHAINED_TABLES) {
      d.table(t);
      const to = commit[`${t}_to`];
      const list = rows[t] as unknown as Record<string, unknown>[];
      for (let id = from[t] + 1; id <= to; id++) {
        const row = list[index[t]];
        if (!row || row.id !== id)
          throw new MigrationLogError(
            path,
            'tampered',
            `commit ${c}${where}: ${t} row ${id} is missing`,
            firstEvent?.id,
          );
        d.row(
          COLUMNS[t].map((k) => row[k]),
          t === 'states' ? (row.bytes as Uint8Array) : undefined,
        );
        index[t]++;
      }
      from[t] = to;
    }
    const digest = d.digest();
    if (!digest.equals(Buffer.from(commit.digest)))
      throw new MigrationLogError(
        path,
        'tampered',
        `commit ${c}${where} does not match its digest: the log was changed after it was written`,
        firstEvent?.id,
      );
    previous = digest;
  }
  for (const t of CHAINED_TABLES) {
    const extra = (rows[t] as { id: number }[])[index[t]];
    if (extra)
      throw new MigrationLogError(
        path,
        'tampered',
        `${t} row ${extra.id} is not covered by any commit (added after the log was written)`,
        t === 'events' ? extra.id : undefined,
      );
  }
}
