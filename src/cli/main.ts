#!/usr/bin/env node
/** The sevtrack CLI: one module per command under commands/, each only parses and calls the library. */
import { Command, CommanderError } from 'commander';
import { registerDecode } from './commands/decode.js';
import { registerDoctor } from './commands/doctor.js';
import { registerExplore } from './commands/explore.js';
import { registerLog } from './commands/log.js';
import { registerMigrate } from './commands/migrate.js';
import { registerReplay } from './commands/replay.js';
import { registerServe } from './commands/serve.js';
import { registerState } from './commands/state.js';
import { registerSysgenid } from './commands/sysgenid.js';
import { EXIT_USAGE } from './run-action.js';

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('sevtrack')
    .description('migration-aware c-bit tracking and safe live migration for AMD SEV guests')
    .version('0.1.0')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  registerMigrate(program);
  registerServe(program);
  registerState(program);
  registerDecode(program);
  registerExplore(program);
  registerSysgenid(program);
  registerDoctor(program);
  registerLog(program);
  registerReplay(program);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  // `sevtrack state | head`: a reader that stopped reading is not an error of
  // ours; stop writing quietly instead of dying of an unhandled EPIPE.
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
      throw err;
    });
  }
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version exit 0; every other parse error is a usage error.
      process.exitCode = err.exitCode === 0 ? 0 : EXIT_USAGE;
      return;
    }
    throw err;
  }
}

await main(process.argv);
