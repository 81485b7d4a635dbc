/**
 * Files a single-file build carries inside itself (`npm run compile` with Bun), by the package path each stands
 * for: the tokenizers the built-in model is made from and onnxruntime-web's .wasm. The build's entry registers them
 * before anything else runs; everywhere else the map stays empty and packages are read from node_modules.
 */
const files = new Map<string, string>();

/** Registers embedded files: package path ("onnxruntime-web/dist/x.wasm") -> where the executable keeps it. */
export function registerEmbeddedFiles(entries: Record<string, string>): void {
  for (const [specifier, where] of Object.entries(entries)) files.set(specifier, where);
}

/** Where the executable keeps the file standing for `specifier`, or undefined when it is not a single-file build. */
export function embeddedFile(specifier: string): string | undefined {
  return files.get(specifier);
}
