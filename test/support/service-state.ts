/** What `sevtrack state --db FILE --json` says about one VM, read through the CLI as an operator would. */
import { expect } from 'vitest';
import { runCli } from './cli.js';

export interface StateJson {
  vms: {
    id: number;
    npages: number;
    encryptedPages: number;
    rangeCount: number;
    lastSeq: number;
    lastSyncSeq: number;
    ready: boolean;
    migrations: {
      id: number;
      destination: string;
      startSeq: number;
      outcome: string | null;
      message: string | null;
      syncs: { n: number; seq: number }[];
    }[];
  }[];
}

export async function stateOf(db: string, vm: number): Promise<StateJson['vms'][number]> {
  const r = await runCli(['state', '--db', db, '--vm', String(vm), '--json', '--limit', '0']);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  return (JSON.parse(r.stdout) as StateJson).vms[0];
}
