/** --chat-template: a template that replaces the model's own wherever a conversation is rendered. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { TokenizeResponse } from "../../src/api/schemas.ts";
import { ChatTemplateError, ChatTokenizer, readChatTemplate } from "../../src/chat/template.ts";
import { postJson, qwen3WithTemplate, testApp } from "../api/app-fixture.ts";

const ROLES = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}";
const OWN = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}";

test("a chat template given replaces the tokenizer's own in rendering, tools and generation prompt included", () => {
  const tokenizer = new ChatTokenizer(qwen3WithTemplate(OWN), { chatTemplate: ROLES });
  const messages = [{ role: "system" as const, content: "Be brief." }, { role: "user" as const, content: "Hi" }];
  assert.equal(tokenizer.renderChatText(messages), "[system]Be brief.[user]Hi[assistant]");
  assert.equal(tokenizer.renderChatText(messages, { add_generation_prompt: false }), "[system]Be brief.[user]Hi");
  // A request cannot swap the template back through chat_template_kwargs.
  assert.equal(tokenizer.renderChatText(messages, { chat_template_kwargs: { chat_template: OWN } }), "[system]Be brief.[user]Hi[assistant]");
  assert.equal(new ChatTokenizer(qwen3WithTemplate(OWN)).renderChatText(messages), "<system>Be brief.<user>Hi");
});

test("a chat template given serves a tokenizer that has none", () => {
  const bare = qwen3WithTemplate(undefined as unknown as string);
  assert.equal(new ChatTokenizer(bare).hasChatTemplate, false);
  const given = new ChatTokenizer(bare, { chatTemplate: ROLES });
  assert.equal(given.hasChatTemplate, true);
  assert.equal(given.renderChatText([{ role: "user", content: "Hi" }]), "[user]Hi[assistant]");
});

test("POST /tokenize renders a conversation with the given template", async () => {
  const tokenizer = new ChatTokenizer(qwen3WithTemplate(OWN), { chatTemplate: ROLES });
  const app = testApp({ tokenizer });
  const res = await app.request("/tokenize", postJson({ messages: [{ role: "user", content: "Hi" }] }));
  assert.equal(res.status, 200);
  assert.deepEqual(TokenizeResponse.parse(await res.json()).tokens, tokenizer.encode("[user]Hi[assistant]", { addSpecialTokens: false }));
});

test("a template that does not parse is refused at start; one that raises for a conversation is the requests' affair", () => {
  const broken = new ChatTokenizer(qwen3WithTemplate(OWN), { chatTemplate: "{% for m in messages %}{{ m.content }}" });
  assert.throws(() => broken.checkChatTemplate(), (e: unknown) => e instanceof ChatTemplateError && /does not parse/.test(e.message));
  const strict = new ChatTokenizer(qwen3WithTemplate(OWN), {
    chatTemplate: "{% if messages[0].role != 'system' %}{{ raise_exception('a system message comes first') }}{% endif %}",
  });
  strict.checkChatTemplate();
  assert.throws(() => strict.renderChatText([{ role: "user", content: "Hi" }]), /a system message comes first/);
});

test("readChatTemplate reads a file, keeps a template given inline, and refuses a path that does not exist", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "gym-edge-chat-template-"));
  try {
    const file = path.join(dir, "chatml.jinja");
    writeFileSync(file, ROLES);
    assert.equal(readChatTemplate(file), ROLES);
    assert.equal(readChatTemplate(ROLES), ROLES);
    assert.equal(readChatTemplate("line one\nline two"), "line one\nline two");
    assert.throws(() => readChatTemplate(path.join(dir, "nope.jinja")), (e: unknown) => {
      return e instanceof ChatTemplateError && e.message === `--chat-template '${path.join(dir, "nope.jinja")}' looks like a file path, but there is no such file`;
    });
    assert.throws(() => readChatTemplate(dir), /looks like a file path, but /);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
