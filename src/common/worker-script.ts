/**
 * Starts a worker thread from a module next to the caller, in both the
 * compiled build (dist/*.js, run directly) and from source under tsx or
 * vitest (src/*.ts), where a small bootstrap registers tsx's loader inside
 * the worker before importing the TypeScript module.
 */
import { Worker, type WorkerOptions } from 'node:worker_threads';

export function startWorker(callerUrl: string, relativeJs: string, options: WorkerOptions): Worker {
  if (!callerUrl.endsWith('.ts')) return new Worker(new URL(relativeJs, callerUrl), options);
  const url = new URL(relativeJs.replace(/\.js$/, '.ts'), callerUrl).href;
  const bootstrap = `import('tsx/esm/api').then((tsx) => { tsx.register(); return import(${JSON.stringify(url)}); })`;
  return new Worker(bootstrap, { ...options, eval: true });
}
