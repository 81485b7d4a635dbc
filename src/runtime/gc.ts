/**
 * One full garbage collection, for the end of loading. Loading leaves garbage that the JavaScript engine keeps
 * resident until its heap next grows, which serving rarely makes it do: on the model thread, tokenizer.json parsed
 * into objects (a 90 MB heap holding 8 MB alive, for Qwen's 151,643-token vocabulary), and on the serving thread what
 * building the tokenizer from its parts left. Node's resident memory once ready went from 1,233-1,239 MB to
 * 1,133-1,189 (bench-135m); Deno's and Bun's barely moved. Bun collects on request; Node and Deno let V8's gc() be
 * reached once its flag is set, from a new context.
 */
import v8 from "node:v8";
import vm from "node:vm";

/** Collects garbage now; false where the runtime refuses (nothing else changes then). */
export function collectGarbage(): boolean {
  try {
    const bun = (globalThis as { Bun?: { gc(force: boolean): void } }).Bun;
    if (bun) {
      bun.gc(true);
      return true;
    }
    v8.setFlagsFromString("--expose-gc");
    (vm.runInNewContext("gc") as () => void)();
    return true;
  } catch {
    return false;
  }
}

/** ArrayBuffer.prototype.transfer (ES2024), where the runtime has it (Deno, Bun, Node 21+; not Node 20). */
const transfer = (ArrayBuffer.prototype as { transfer?: (length?: number) => ArrayBuffer }).transfer;

/**
 * Frees an ArrayBuffer's memory now rather than when the garbage collector finds it: `transfer(0)` detaches it
 * (every view of it reads as empty afterwards), dropping its store on this thread. For the large buffers each model
 * run returns: freed by the collector, on its own threads and late, they went back to the system and every run
 * faulted its new ones in page by page — on Bun (mimalloc returns a large block freed on another thread at once)
 * ~2,500-3,500 page faults a decode run and 140-160 ms a run where Node took 85-100; on Deno ~1,500-2,000 faults
 * and 104 ms. Freed here: Bun 89 ms (~780 faults), Deno 87 ms (~5). A no-op where `transfer` is missing (Node 20,
 * whose allocator keeps such blocks for reuse anyway: ~20 faults a run), and for a shared or already detached buffer.
 */
export function freeBuffer(buffer: ArrayBufferLike): void {
  if (!transfer || !(buffer instanceof ArrayBuffer) || (buffer as { detached?: boolean }).detached) return;
  transfer.call(buffer, 0);
}
