/**
 * Files that appear whole or not at all: bytes go to a temporary name in the same folder,
 * then one rename puts them in place.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";

/** A file being written; it exists under its real name only after `commit`. */
export class AtomicFile {
  readonly tmpPath: string;
  private fd: number;
  private position = 0;

  constructor(readonly filePath: string) {
    fs.mkdirSync(path.dirname(filePath), { recursive: true });
    const suffix = `${process.pid}-${Math.random().toString(36).slice(2, 10)}`;
    this.tmpPath = `${filePath}.tmp-${suffix}`;
    this.fd = fs.openSync(this.tmpPath, "w");
  }

  /** Appends bytes. */
  write(bytes: Uint8Array): void {
    let done = 0;
    while (done < bytes.byteLength) {
      done += fs.writeSync(this.fd, bytes, done, bytes.byteLength - done, this.position + done);
    }
    this.position += bytes.byteLength;
  }

  /** Bytes written so far. */
  get size(): number {
    return this.position;
  }

  /** Flushes, closes and renames the file into place. */
  commit(): void {
    fs.fsyncSync(this.fd);
    fs.closeSync(this.fd);
    fs.renameSync(this.tmpPath, this.filePath);
  }

  /** Closes and deletes the temporary file. */
  abort(): void {
    try {
      fs.closeSync(this.fd);
    } catch { /* already closed */ }
    fs.rmSync(this.tmpPath, { force: true });
  }
}

/** Writes a whole file atomically from one or more chunks. */
export function writeFileAtomic(filePath: string, data: string | Uint8Array | Uint8Array[]): void {
  const file = new AtomicFile(filePath);
  try {
    const chunks = typeof data === "string" ? [new TextEncoder().encode(data)] : Array.isArray(data) ? data : [data];
    for (const c of chunks) file.write(c);
    file.commit();
  } catch (e) {
    file.abort();
    throw e;
  }
}
