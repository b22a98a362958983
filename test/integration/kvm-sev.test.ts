/**
 * The `sev` group: runs only where /dev/sev exists (an AMD host with the PSP
 * driver), and skips, saying so, everywhere else. It checks that sevtrack
 * reads the SEV platform status from the PSP and that doctor reports it and
 * turns the SEV checks on only for a platform that answered.
 */
import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { nativeAddon } from '../../src/common/native.js';
import { doctorReport } from '../../src/vmm/kvm/doctor-report.js';

const noSev = existsSync('/dev/sev') ? undefined : 'no /dev/sev on this host (not an AMD SEV host)';
if (noSev) console.warn(`sev tests skipped: ${noSev}`);

describe('sev', () => {
  it.skipIf(noSev)('reads the SEV platform status from /dev/sev', () => {
    const s = nativeAddon().sevPlatformStatus();
    expect(s.present).toBe(true);
    if (s.ok) {
      expect(['UNINIT', 'INIT', 'WORKING']).toContain(s.state);
      expect(s.apiMajor).toBeGreaterThan(0);
    } else {
      expect(s.error).toMatch(/SEV_PLATFORM_STATUS|open\(\/dev\/sev\)/);
    }
  });

  it.skipIf(noSev)('doctor reports the platform and enables SEV checks only when it answered', () => {
    const r = doctorReport();
    expect(r.sev.device).toBe(true);
    expect(r.uses.sevChecks).toBe(r.sev.platform.ok);
  });

  it.skipIf(noSev ? undefined : 'this host has /dev/sev')(
    'without /dev/sev, the status says absent and doctor turns SEV checks off',
    () => {
      const s = nativeAddon().sevPlatformStatus();
      expect(s.present).toBe(false);
      expect(s.ok).toBe(false);
      expect(doctorReport().uses.sevChecks).toBe(false);
    },
  );
});
