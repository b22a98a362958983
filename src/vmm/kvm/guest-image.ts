/**
 * The guest helper's flat binary (native/guest/helper.c), built at install
 * time by native/guest/build.mjs into build/guest/helper.bin.
 */
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { KvmUnavailableError } from '../../common/errors.js';

/**
 * Relative to src/vmm/kvm or dist/vmm/kvm (three levels below the root), or
 * to build/bench/src/vmm/kvm, where `npm run bench` compiles the benchmarks.
 * The first that exists; the first when none does (for the error message).
 */
export function guestImagePath(): string {
  const candidates = ['../../../build/guest/helper.bin', '../../../../../build/guest/helper.bin'].map((rel) =>
    fileURLToPath(new URL(rel, import.meta.url)),
  );
  return candidates.find((path) => existsSync(path)) ?? candidates[0];
}

let image: Uint8Array | undefined;

/** The binary, read once. Throws KvmUnavailableError (with the build command) when it was not built. */
export function guestImage(): Uint8Array {
  if (image) return image;
  const path = guestImagePath();
  try {
    image = new Uint8Array(readFileSync(path));
  } catch (err) {
    throw new KvmUnavailableError(
      `the guest helper ${path} cannot be read (${(err as Error).message}); build it with \`node native/guest/build.mjs\``,
    );
  }
  return image;
}
