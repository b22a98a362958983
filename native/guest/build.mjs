#!/usr/bin/env node
/**
 * Builds the guest helper (native/guest/helper.c) into a flat binary,
 * build/guest/helper.bin, loaded by the kvm backend at the guest address
 * SVT_CODE_GPA. Runs at install time (package.json "install"), after
 * node-gyp, with the same toolchain: gcc, then objcopy.
 *
 * Flags: freestanding, no libc, no PIC, no red zone (no interrupts, but a
 * future IDT must not clobber), general registers only (the KVM-PVM CPL0
 * profile emulates every instruction and SSE is not worth the risk),
 * -fno-delete-null-pointer-checks (the control page lives at guest address 0).
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const out = join(root, 'build', 'guest');
mkdirSync(out, { recursive: true });
const cc = process.env.CC ?? 'gcc';
const elf = join(out, 'helper.elf');
const bin = join(out, 'helper.bin');

function run(cmd, args) {
  try {
    execFileSync(cmd, args, { stdio: 'inherit' });
  } catch (err) {
    process.stderr.write(
      `sevtrack: building the guest helper failed at \`${cmd}\` (${err.message}); install gcc and binutils, then run \`node native/guest/build.mjs\`\n`,
    );
    process.exit(1);
  }
}

run(cc, [
  '-O2',
  '-std=gnu11',
  '-ffreestanding',
  '-fno-pic',
  '-fno-pie',
  '-no-pie',
  '-static',
  '-nostdlib',
  '-fno-delete-null-pointer-checks',
  // GCC 12 warns about any access near address 0 (the control page).
  '-Wno-array-bounds',
  '-Wno-stringop-overflow',
  '-mno-red-zone',
  '-mgeneral-regs-only',
  '-fno-stack-protector',
  '-fno-asynchronous-unwind-tables',
  '-Wall',
  '-Wextra',
  `-Wl,-T,${join(here, 'helper.ld')}`,
  '-Wl,--build-id=none',
  '-Wl,--no-warn-rwx-segments',
  '-o',
  elf,
  join(here, 'helper.c'),
]);
run(process.env.OBJCOPY ?? 'objcopy', ['-O', 'binary', elf, bin]);
const size = statSync(bin).size;
if (size > 0x20000) {
  process.stderr.write(
    `sevtrack: the guest helper is ${size} bytes; it must fit in 128 KiB (SVT_CODE_MAX)\n`,
  );
  process.exit(1);
}
process.stdout.write(`sevtrack: guest helper built: ${bin} (${size} bytes)\n`);
