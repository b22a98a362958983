/** Runs the CLI from source (through tsx) as a child process, as a user would run it. */
import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
/** The CLI's source, or its compiled sibling when this module itself runs compiled (`npm run bench`). */
export const CLI_MAIN = fileURLToPath(
  new URL(
    import.meta.url.endsWith('.js') ? '../../src/cli/main.js' : '../../src/cli/main.ts',
    import.meta.url,
  ),
);

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Node arguments that run an entry point (TypeScript through tsx, compiled JavaScript as it is). */
export function tsNodeArgs(entry: string, args: string[]): string[] {
  return entry.endsWith('.ts') ? ['--import', 'tsx', entry, ...args] : [entry, ...args];
}

export function runCli(
  args: string[],
  options: { input?: string; timeoutMs?: number } = {},
): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, tsNodeArgs(CLI_MAIN, args), { cwd: ROOT, stdio: 'pipe' });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => {
      stdout += d;
    });
    child.stderr.on('data', (d) => {
      stderr += d;
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 120_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
    child.stdin.end(options.input ?? '');
  });
}

/** A CLI process left running: its output so far and its exit code. */
export interface RunningCli {
  child: ChildProcess;
  out: () => string;
  err: () => string;
  exit: Promise<number | null>;
}

/**
 * Starts the CLI from source without waiting for it; `wrapper` runs it under
 * another command (e.g. ['ip', 'netns', 'exec', NS]).
 */
export function startCli(args: string[], wrapper: string[] = []): RunningCli {
  const argv = [process.execPath, ...tsNodeArgs(CLI_MAIN, args)];
  const all = [...wrapper, ...argv];
  const child = spawn(all[0], all.slice(1), { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout?.on('data', (d) => {
    out += d;
  });
  child.stderr?.on('data', (d) => {
    err += d;
  });
  return { child, out: () => out, err: () => err, exit: new Promise((r) => child.on('exit', (c) => r(c))) };
}

/** Resolves once the running CLI's stderr matches pattern (or rejects if it exits first). */
export async function waitForStderr(
  cli: RunningCli,
  pattern: RegExp,
  timeoutMs = 30_000,
): Promise<RegExpExecArray> {
  const deadline = Date.now() + timeoutMs;
  let exited = false;
  cli.exit.then(() => {
    exited = true;
  });
  for (;;) {
    const m = pattern.exec(cli.err());
    if (m) return m;
    if (exited || Date.now() > deadline) throw new Error(`never printed ${pattern}: ${cli.err()}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
