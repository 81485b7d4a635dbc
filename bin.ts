#!/usr/bin/env node
// The package's `gym-edge` command (Node and Bun run the compiled dist/bin.js).
import { main } from "./src/cli/main.ts";
import { exitProcess, programArgs } from "./src/runtime/process.ts";

const code = await main(programArgs());
if (code !== 0) exitProcess(code);
