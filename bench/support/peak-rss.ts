/**
 * Preloaded into a child process (`node --import peak-rss.js ...`): when the
 * process exits, writes its peak resident set size (all threads) to stderr as
 * `sevtrack-peak-rss-kib N`. It reads VmHWM from /proc/self/status, the high
 * water mark of this process's own memory: getrusage's ru_maxrss (what
 * process.resourceUsage reports) also counts the parent's memory that the
 * forked child held before exec, which would charge the benchmark's own RSS
 * to the child.
 */
import { readFileSync, writeSync } from 'node:fs';

process.on('exit', () => {
  const m = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync('/proc/self/status', 'utf8'));
  const kib = m ? Number(m[1]) : process.resourceUsage().maxRSS;
  writeSync(2, `\nsevtrack-peak-rss-kib ${kib}\n`);
});
