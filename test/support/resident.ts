/**
 * This process's resident anonymous memory (RssAnon in /proc/self/status),
 * in bytes: what guest memory made resident, released, or left alone adds
 * to it, without the file mappings VmRSS also counts.
 */
import { readFileSync } from 'node:fs';

export function rssAnon(): number {
  const kb = /^RssAnon:\s+(\d+) kB/m.exec(readFileSync('/proc/self/status', 'utf8'));
  if (!kb) throw new Error('/proc/self/status has no RssAnon line');
  return Number(kb[1]) * 1024;
}
