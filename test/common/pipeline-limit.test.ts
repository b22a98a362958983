import { describe, expect, it } from 'vitest';
import { nativeAddon } from '../../src/common/native.js';

// The benchmarks' measuring loops (native/pipeline_limit.cc): they must run
// the work they claim (the encrypted loops open what they sealed, or fail)
// and refuse arguments out of range. Their speed is the benchmarks' business.
describe('the limit loops of the migration benchmarks', () => {
  for (const encrypted of [true, false]) {
    for (const hash of ['mac', 'sha256', 'none'] as const) {
      it(`one-thread limit and two-thread handoff, ${encrypted ? 'encrypted' : 'shared'} pages, ${hash} digests`, () => {
        const limit = nativeAddon().pipelineLimit(encrypted, hash, 300, 2, 2);
        // 300 pages: a last frame of 44 pages; 3 passes over 1 slot: the source waits for every frame.
        const handoff = nativeAddon().pipelineHandoff(encrypted, hash, 300, 3, 1);
        for (const rate of [limit, handoff]) {
          expect(Number.isFinite(rate)).toBe(true);
          expect(rate).toBeGreaterThan(0);
        }
      });
    }
  }

  it('refuses an unknown digest and out-of-range sizes, naming what is allowed', () => {
    const a = nativeAddon();
    expect(() => a.pipelineHandoff(false, 'md5' as 'mac', 16, 1, 3)).toThrow(
      /hash must be 'sha256', 'mac' or 'none'/,
    );
    expect(() => a.pipelineHandoff(false, 'mac', 0, 1, 3)).toThrow(/pages must be in \[1, 2\^20\]/);
    expect(() => a.pipelineHandoff(false, 'mac', 16, 1, 0)).toThrow(/slots in \[1, 64\]/);
    expect(() => a.pipelineHandoff(false, 'mac', 16, 1001, 3)).toThrow(/passes in \[1, 1000\]/);
    expect(() => a.pipelineLimit(false, 'mac', 16, 1, 65)).toThrow(/threads in \[1, 64\]/);
  });
});
