// The official openai SDK, pointed at a running tollgate by base_url and api_key only.
import { test } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";

const baseURL = process.env.TOLLGATE_BASE_URL;
const apiKey = process.env.TOLLGATE_KEY;
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });

test("non-stream chat", async () => {
  const res = await client.chat.completions.create({
    model: "e2e-chat",
    messages: [{ role: "user", content: "héllo 你好 🙂" }],
  });
  assert.equal(res.object, "chat.completion");
  assert.equal(res.choices[0].message.content, "echo: héllo 你好 🙂");
  assert.ok(res.usage.total_tokens > 0);
});

test("stream chat, event by event, with usage", async () => {
  const stream = await client.chat.completions.create({
    model: "e2e-chat",
    messages: [{ role: "user", content: "one two three" }],
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = "";
  let chunks = 0;
  let usage = null;
  for await (const chunk of stream) {
    chunks += 1;
    if (chunk.choices.length > 0) text += chunk.choices[0].delta?.content ?? "";
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, "echo: one two three");
  assert.ok(chunks >= 4, `expected several chunks, got ${chunks}`);
  assert.ok(usage && usage.completion_tokens > 0);
});

test("raw response carries the gateway headers", async () => {
  const { response } = await client.chat.completions
    .create({ model: "e2e-chat", messages: [{ role: "user", content: "x" }] })
    .withResponse();
  assert.equal(response.headers.get("x-tollgate-backend"), "fake");
  assert.match(response.headers.get("x-request-id"), /^req_/);
});

test("models list", async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.deepEqual(ids, ["e2e-chat", "e2e-claude", "e2e-responses-native", "e2e-chat-overloaded", "e2e-claude-overloaded",
    "e2e-responses-background"]);
});

test("embeddings", async () => {
  const res = await client.embeddings.create({ model: "e2e-chat", input: "abc" });
  assert.equal(res.data[0].embedding.length, 3);
});

test("embeddings of several inputs, in the SDK's default base64 and as floats", async () => {
  // Without encoding_format the SDK asks for base64 and decodes it into numbers.
  const b64 = await client.embeddings.create({ model: "e2e-chat", input: ["one", "two", "one"] });
  assert.equal(b64.data.length, 3);
  assert.deepEqual(b64.data.map((d) => d.index), [0, 1, 2]);
  for (const d of b64.data) assert.equal(d.embedding.length, 3);
  assert.deepEqual(b64.data[0].embedding, b64.data[2].embedding);
  assert.notDeepEqual(b64.data[0].embedding, b64.data[1].embedding);
  const floats = await client.embeddings.create({ model: "e2e-chat", input: ["one", "two"], encoding_format: "float" });
  // float32 over the wire both ways: the same numbers.
  assert.deepEqual(floats.data[0].embedding.map(Math.fround), b64.data[0].embedding);
});

test("unknown model is a NotFoundError with the OpenAI shape", async () => {
  await assert.rejects(
    client.chat.completions.create({ model: "nope", messages: [{ role: "user", content: "x" }] }),
    (err) => {
      assert.ok(err instanceof OpenAI.NotFoundError);
      assert.equal(err.status, 404);
      assert.equal(err.code, "model_not_found");
      return true;
    },
  );
});

test("a wrong key is an AuthenticationError", async () => {
  const bad = new OpenAI({ baseURL, apiKey: "tg-wrong", maxRetries: 0 });
  await assert.rejects(bad.models.list(), (err) => err instanceof OpenAI.AuthenticationError);
});
