/**
 * The guest helper's flat binary (native/guest/helper.c), built at install
 * time by native/guest/build.mjs into build/guest/helper.bin.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { KvmUnavailableError } from '../../common/errors.js';

/** Relative to src/vmm/kvm or dist/vmm/kvm: both sit three levels below the root. */
export function guestImagePath(): string {
  return fileURLToPath(new URL('../../../build/guest/helper.bin', import.meta.url));
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
