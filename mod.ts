/**
 * gym-edge: an OpenAI-compatible generation server for reinforcement learning on language models.
 * Imported, this module is the library; run (`deno run -A mod.ts`, `bun mod.ts`), it is the command line.
 */
import { main } from "./src/cli/main.ts";
import { exitProcess, isMainModule, programArgs } from "./src/runtime/process.ts";

export { main } from "./src/cli/main.ts";
export { startServer, type StartedServer } from "./src/server.ts";
export { ServerConfig } from "./src/config.ts";
export { createApp } from "./src/api/app.ts";
export { loadModel } from "./src/model/loader.ts";
export { buildModel } from "./src/model/builder/build.ts";
export { serve } from "./src/runtime/serve.ts";
export { VERSION } from "./src/version.ts";

if (isMainModule(import.meta)) {
  const code = await main(programArgs());
  if (code !== 0) exitProcess(code);
}
