/**
 * The replay's timeline chart as a self-contained SVG (no scripts, no
 * external fonts): one group of bars per round — pages found dirty, pages
 * sent, guest c-bit changes, pages resent only for their c-bit — on a
 * logarithmic axis (the bulk round sends every page, a paused round a few
 * hundred), each round labelled with when it started and how long it took,
 * the pause marked and the paused round shaded as the downtime.
 */
import type { ReplayReport } from './replay.js';

const SERIES = [
  { key: 'dirty', label: 'dirty pages (harvested)', color: '#e07b39' },
  { key: 'sent', label: 'pages sent', color: '#3a6ea5' },
  { key: 'cbitChanges', label: 'c-bit changes (guest)', color: '#7b5ea7' },
  { key: 'cbitResends', label: 'c-bit retransmits', color: '#2e9e5b' },
] as const;

const W_BAR = 18;
const GAP = 4;
const LEFT = 70;
const TOP = 86;
const PLOT_H = 300;
const BOTTOM = 86;

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** A bar's label: exact below 10 000, else in thousands (labels must fit over an 18 px bar). */
const fmtCount = (v: number) => (v < 10_000 ? String(v) : `${(v / 1000).toFixed(v < 100_000 ? 1 : 0)}k`);

const fmtMs = (us: number) =>
  us >= 10_000_000 ? `${(us / 1e6).toFixed(1)} s` : `${(us / 1000).toFixed(us < 10_000 ? 1 : 0)} ms`;

/** Renders the chart of a replay report; returns the SVG text. */
export function renderPlot(r: ReplayReport): string {
  const rounds = r.rounds;
  const barsW = SERIES.length * (W_BAR + 4);
  const minGroupW = barsW + 2 * GAP + 24;
  const height = TOP + PLOT_H + BOTTOM;
  let max = 1;
  for (const x of rounds) for (const s of SERIES) max = Math.max(max, x[s.key]);
  const decades = Math.max(1, Math.ceil(Math.log10(max + 1)));
  const y = (v: number) => TOP + PLOT_H - (v <= 0 ? 0 : (Math.log10(v + 1) / decades) * PLOT_H);
  const verdict =
    r.outcome === 'incomplete'
      ? 'no verdict (incomplete log)'
      : r.outcome === 'clean'
        ? `clean: ${r.comparedPages} pages verified (${r.verify})`
        : `${r.corruptedCount} pages corrupted (${r.verify})`;
  const title = `Migration replay: ${r.protocol}, ${r.npages} pages, ${r.vcpus} vCPUs — ${verdict}`;
  // Wide enough for every round, the legend and the title (about 9 px per character at 16 px).
  const width = Math.max(
    LEFT + rounds.length * minGroupW + 40,
    LEFT + SERIES.length * 190,
    LEFT + title.length * 9 + 20,
  );
  // Rounds share the plot's width.
  const groupW = Math.max(minGroupW, (width - LEFT - 40) / Math.max(1, rounds.length));
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="#ffffff"/>`,
  );
  out.push(`<text x="${LEFT}" y="24" font-size="16" font-weight="bold">${esc(title)}</text>`);
  // Legend.
  SERIES.forEach((s, i) => {
    const x = LEFT + i * 190;
    out.push(
      `<rect x="${x}" y="40" width="12" height="12" fill="${s.color}"/>`,
      `<text x="${x + 18}" y="50">${esc(s.label)}</text>`,
    );
  });
  out.push(
    `<rect x="${LEFT}" y="60" width="12" height="12" fill="#f3d2d2"/>`,
    `<text x="${LEFT + 18}" y="70">downtime (guest paused until resume)</text>`,
    `<line x1="${LEFT + 262}" y1="66" x2="${LEFT + 286}" y2="66" stroke="#c0392b" stroke-width="2" stroke-dasharray="5,3"/>`,
    `<text x="${LEFT + 292}" y="70">pause</text>`,
  );
  // Paused round shading and the pause line.
  const pausedIdx = rounds.findIndex((x) => x.paused);
  if (pausedIdx >= 0) {
    const x0 = LEFT + pausedIdx * groupW;
    const down = r.pause?.downtimeUs;
    out.push(
      `<rect x="${x0}" y="${TOP}" width="${groupW}" height="${PLOT_H}" fill="#f3d2d2"/>`,
      `<line x1="${x0}" y1="${TOP - 6}" x2="${x0}" y2="${TOP + PLOT_H}" stroke="#c0392b" stroke-width="2" stroke-dasharray="5,3"/>`,
      `<text x="${x0 + 4}" y="${TOP + 12}" fill="#c0392b">pause</text>`,
      down != null ? `<text x="${x0 + 4}" y="${TOP + 26}" fill="#c0392b">downtime ${fmtMs(down)}</text>` : '',
    );
  }
  // Axis and decade grid.
  for (let d = 0; d <= decades; d++) {
    const v = 10 ** d;
    const yy = y(v - 1);
    out.push(
      `<line x1="${LEFT}" y1="${yy.toFixed(1)}" x2="${width - 20}" y2="${yy.toFixed(1)}" stroke="#dddddd"/>`,
      `<text x="${LEFT - 6}" y="${(yy + 4).toFixed(1)}" text-anchor="end">${v === 1 ? '0' : v >= 1e6 ? `${v / 1e6}M` : v >= 1000 ? `${v / 1000}k` : v}</text>`,
    );
  }
  out.push(
    `<line x1="${LEFT}" y1="${TOP}" x2="${LEFT}" y2="${TOP + PLOT_H}" stroke="#333333"/>`,
    `<line x1="${LEFT}" y1="${TOP + PLOT_H}" x2="${width - 20}" y2="${TOP + PLOT_H}" stroke="#333333"/>`,
    `<text transform="translate(18 ${TOP + PLOT_H / 2}) rotate(-90)" text-anchor="middle">pages (log scale)</text>`,
  );
  // Bars.
  const t0 = rounds[0]?.startUs ?? 0;
  rounds.forEach((x, i) => {
    const gx = LEFT + i * groupW + (groupW - barsW) / 2;
    SERIES.forEach((s, j) => {
      const v = x[s.key];
      const bx = gx + j * (W_BAR + 4);
      const by = y(v);
      out.push(
        `<rect x="${bx}" y="${by.toFixed(1)}" width="${W_BAR}" height="${(TOP + PLOT_H - by).toFixed(1)}" fill="${s.color}"><title>round ${x.round}: ${v} ${esc(s.label)}</title></rect>`,
      );
      if (v > 0)
        out.push(
          `<text x="${bx + W_BAR / 2}" y="${(by - 3).toFixed(1)}" font-size="8" text-anchor="middle">${fmtCount(v)}</text>`,
        );
    });
    const cx = LEFT + i * groupW + groupW / 2;
    out.push(
      `<text x="${cx}" y="${TOP + PLOT_H + 16}" text-anchor="middle" font-weight="bold">round ${x.round}</text>`,
      x.paused
        ? `<text x="${cx}" y="${TOP + PLOT_H + 57}" text-anchor="middle" font-size="10" fill="#c0392b">paused</text>`
        : '',
      `<text x="${cx}" y="${TOP + PLOT_H + 31}" text-anchor="middle" font-size="10">at ${fmtMs(x.startUs - t0)}</text>`,
      `<text x="${cx}" y="${TOP + PLOT_H + 44}" text-anchor="middle" font-size="10">took ${fmtMs(x.endUs - x.startUs)}</text>`,
    );
  });
  out.push(
    `<text x="${LEFT}" y="${height - 14}" font-size="10" fill="#555555">${esc(r.path.split('/').at(-1) ?? r.path)}: rounds as recorded in the migration log; times from the log's event clock</text>`,
    '</svg>',
  );
  return `${out.join('\n')}\n`;
}
