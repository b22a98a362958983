/**
 * The layers of src/, and the one direction imports may run in
 * (docs/design.md, "Layers"): cli → explore/replay → migration → vmm →
 * guest, host, sysgenid → common. A layer imports only layers below it;
 * guest, host and sysgenid are peers that never import each other; no
 * import circle anywhere. `npm test` runs this check.
 */
const below = {
  common: [],
  guest: ['common'],
  host: ['common'],
  sysgenid: ['common'],
  vmm: ['common', 'guest', 'host', 'sysgenid'],
  migration: ['common', 'guest', 'host', 'sysgenid', 'vmm'],
  explore: ['common', 'guest', 'host', 'sysgenid', 'vmm', 'migration'],
  cli: ['common', 'guest', 'host', 'sysgenid', 'vmm', 'migration', 'explore'],
};
const layers = Object.keys(below);

module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      comment:
        'An import circle: two modules that need each other are one concept, or one of them owns a piece the other should import.',
      severity: 'error',
      from: { path: '^src/' },
      to: { circular: true },
    },
    ...layers.map((layer) => ({
      name: `layer-${layer}`,
      comment: `src/${layer} may import only ${below[layer].join(', ') || 'itself'} (and itself).`,
      severity: 'error',
      from: { path: `^src/${layer}/` },
      to: {
        path: `^src/(?!(${[layer, ...below[layer]].join('|')})/)[^/]+/`,
      },
    })),
    {
      name: 'layer-known',
      comment: 'Every folder under src/ is a layer listed here (or index.ts, the public entry).',
      severity: 'error',
      from: { path: `^src/(?!(${layers.join('|')})/|index\\.ts$)` },
      to: {},
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsConfig: { fileName: 'tsconfig.json' },
    tsPreCompilationDeps: true,
  },
};
