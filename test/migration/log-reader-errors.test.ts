/**
 * The migration log reader's refusals not covered by migration-log.test.ts
 * (src/migration/log-reader.ts, docs/migration-log.md): a wrong magic, a
 * version that disagrees with SQLite's user_version, an older versioned log,
 * a log database without its meta table, a commit missing from the chain,
 * and a path that is not a file. Each a MigrationLogError (bad input) naming
 * the problem, the field and what was expected.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { MisuseError } from '../../src/common/errors.js';
import { MigrationLogReader } from '../../src/migration/log-reader.js';
import { LOG_MAGIC, LOG_VERSION, MigrationLogError } from '../../src/migration/log-schema.js';
import { MigrationLog } from '../../src/migration/migration-log.js';
import { tempDir } from '../support/tmp.js';

/** A small valid log of a few commits. */
function writeLog(): string {
  const path = join(tempDir(), 'm.db');
  const log = MigrationLog.create(path, {
    role: 'destination',
    npages: 16,
    vcpus: 1,
    protocol: 'safe',
    verify: 'strict',
    params: {},
  });
  log.start({ generation: 0, migrationControl: 1 });
  log.commit();
  log.roundEnd(0, { pagesReceived: 16 });
  log.commit();
  log.abort(0, 'the peer closed the connection');
  log.close({ aborted: 'the peer closed the connection' });
  return path;
}

function edit(path: string, sql: string, pragma?: string): void {
  const db = new Database(path);
  if (pragma) db.pragma(pragma);
  if (sql) db.exec(sql);
  db.close();
}

function refusal(path: string): MigrationLogError {
  try {
    MigrationLogReader.open(path).close();
  } catch (err) {
    expect(err).toBeInstanceOf(MigrationLogError);
    expect(err).toBeInstanceOf(MisuseError);
    return err as MigrationLogError;
  }
  throw new Error(`${path} was accepted`);
}

describe('MigrationLogReader refuses a log it cannot trust, naming why', () => {
  it('the log written here reads back, its abort included', () => {
    const r = MigrationLogReader.open(writeLog());
    expect(r.events.find((e) => e.kind === 'abort')?.detail.reason).toBe('the peer closed the connection');
    expect(r.contents.complete).toBe(true);
    r.close();
  });

  it('another magic in the meta table: not a migration log', () => {
    const path = writeLog();
    edit(path, "UPDATE meta SET value = 'sevtrack-other' WHERE key = 'magic'");
    const e = refusal(path);
    expect(e.problem).toBe('not-a-log');
    expect(e.message).toBe(`${path}: meta.magic is "sevtrack-other", expected "${LOG_MAGIC}"`);
  });

  it('meta.version disagreeing with SQLite user_version: tampered', () => {
    const path = writeLog();
    edit(path, `UPDATE meta SET value = '${LOG_VERSION + 5}' WHERE key = 'version'`);
    const e = refusal(path);
    expect(e.problem).toBe('tampered');
    expect(e.message).toBe(
      `${path}: meta.version ${LOG_VERSION + 5} disagrees with user_version ${LOG_VERSION}`,
    );
  });

  it('an older versioned log: older-version, naming both versions', () => {
    const path = writeLog();
    edit(
      path,
      `UPDATE meta SET value = '${LOG_VERSION - 1}' WHERE key = 'version'`,
      `user_version = ${LOG_VERSION - 1}`,
    );
    const e = refusal(path);
    expect(e.problem).toBe('older-version');
    expect(e.message).toBe(
      `${path}: migration log version ${LOG_VERSION - 1} is older than this sevtrack reads (${LOG_VERSION})`,
    );
  });

  it('a log database of the current version without its meta table', () => {
    const path = writeLog();
    edit(path, 'DROP TABLE meta');
    const e = refusal(path);
    expect(e.problem).toBe('not-a-log');
    expect(e.message).toBe(`${path}: a migration log without its meta table`);
  });

  it('a commit removed from the chain: tampered, naming the commit and the one in its place', () => {
    const path = writeLog();
    const db = new Database(path);
    const commits = (db.prepare('SELECT n FROM commits ORDER BY n').all() as { n: number }[]).map((r) => r.n);
    db.close();
    expect(commits.length).toBeGreaterThanOrEqual(3);
    edit(path, 'DELETE FROM commits WHERE n = 1');
    const e = refusal(path);
    expect(e.problem).toBe('tampered');
    expect(e.message).toMatch(/: commit 1 is missing \(found commit 2 in its place\)$/);
    expect(e.eventId).toBe(1);
  });

  it('a directory in place of the log file: refused as a log, not a raw SQLite error', () => {
    const dir = join(tempDir(), 'log.db');
    mkdirSync(dir);
    const e = refusal(dir);
    expect(e.code).toBe('ERR_BAD_DATABASE');
  });
});
