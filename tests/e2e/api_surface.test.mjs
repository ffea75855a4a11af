// The APIs clients other than OpenAI chat speak, with the real SDKs, unchanged but for base URL
// and key: @anthropic-ai/sdk on /v1/messages, the openai SDK's Responses API and models.retrieve,
// the Vercel AI SDK's default OpenAI provider (the Responses API), and the openai SDK in front of a
// kind anthropic backend. Each model below is served by the fake upstream: e2e-chat over the
// OpenAI wire format, e2e-claude over Anthropic's (x-api-key, /v1/messages; Messages requests are
// relayed to it untranslated), e2e-responses-native over the Responses API (relayed).
import { test } from "node:test";
import assert from "node:assert/strict";
import Anthropic from "@anthropic-ai/sdk";
import OpenAI from "openai";
import { createOpenAI } from "@ai-sdk/openai";
import { generateObject, generateText, stepCountIs, streamText, tool } from "ai";
import { z } from "zod";

const baseURL = process.env.TOLLGATE_BASE_URL; // .../v1
const root = baseURL.replace(/\/v1$/, "");
const apiKey = process.env.TOLLGATE_KEY;
const limitedKey = process.env.TOLLGATE_LIMITED_KEY;
const anthropic = new Anthropic({ baseURL: root, apiKey, maxRetries: 0 });
const openai = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const vercel = createOpenAI({ baseURL, apiKey });

const weatherTool = {
  name: "get_weather",
  description: "The weather in a city",
  input_schema: { type: "object", properties: { text: { type: "string" } }, required: ["text"] },
};

for (const model of ["e2e-chat", "e2e-claude"]) {
  test(`anthropic messages.create (${model})`, async () => {
    const msg = await anthropic.messages.create({
      model,
      max_tokens: 64,
      system: "be brief",
      messages: [
        { role: "user", content: "earlier" },
        { role: "assistant", content: "ok" },
        { role: "user", content: [{ type: "text", text: "héllo 你好" }] },
      ],
    });
    assert.equal(msg.type, "message");
    assert.equal(msg.role, "assistant");
    assert.equal(msg.model, model);
    assert.equal(msg.content[0].type, "text");
    assert.equal(msg.content[0].text, "echo: héllo 你好");
    assert.equal(msg.stop_reason, "end_turn");
    assert.ok(msg.usage.input_tokens > 0 && msg.usage.output_tokens > 0);
  });

  test(`anthropic messages.stream, Anthropic's event sequence (${model})`, async () => {
    const stream = anthropic.messages.stream({ model, max_tokens: 64, messages: [{ role: "user", content: "one two three" }] });
    const types = [];
    let text = "";
    for await (const event of stream) {
      types.push(event.type);
      if (event.type === "content_block_delta" && event.delta.type === "text_delta") text += event.delta.text;
    }
    const final = await stream.finalMessage();
    assert.equal(text, "echo: one two three");
    assert.equal(final.content[0].text, "echo: one two three");
    assert.equal(types[0], "message_start");
    assert.equal(types.at(-1), "message_stop");
    assert.equal(types.at(-2), "message_delta");
    assert.ok(types.filter((t) => t === "content_block_delta").length >= 3);
    assert.ok(final.usage.input_tokens > 0 && final.usage.output_tokens > 0);
    assert.equal(final.model, model);
  });

  test(`anthropic tool use round trip, whole and streamed (${model})`, async () => {
    const first = await anthropic.messages.create({
      model,
      max_tokens: 64,
      tools: [weatherTool],
      messages: [{ role: "user", content: "weather in Paris" }],
    });
    assert.equal(first.stop_reason, "tool_use");
    const use = first.content.find((b) => b.type === "tool_use");
    assert.equal(use.name, "get_weather");
    assert.deepEqual(use.input, { text: "weather in Paris" });
    const second = await anthropic.messages.create({
      model,
      max_tokens: 64,
      tools: [weatherTool],
      messages: [
        { role: "user", content: "weather in Paris" },
        { role: "assistant", content: first.content },
        { role: "user", content: [{ type: "tool_result", tool_use_id: use.id, content: "sunny" }] },
      ],
    });
    assert.equal(second.content[0].text, "tool said: sunny");

    const stream = anthropic.messages.stream({
      model,
      max_tokens: 64,
      tools: [weatherTool],
      messages: [{ role: "user", content: "weather in Rome" }],
    });
    let json = "";
    stream.on("inputJson", (partial) => (json += partial));
    const final = await stream.finalMessage();
    const streamedUse = final.content.find((b) => b.type === "tool_use");
    assert.deepEqual(streamedUse.input, { text: "weather in Rome" });
    assert.deepEqual(JSON.parse(json), { text: "weather in Rome" });
    assert.equal(final.stop_reason, "tool_use");
  });

  test(`anthropic errors: 401, 404, 429, 529 (${model})`, async () => {
    const wrong = new Anthropic({ baseURL: root, apiKey: "tg-wrong", maxRetries: 0 });
    await assert.rejects(wrong.messages.create({ model, max_tokens: 8, messages: [{ role: "user", content: "x" }] }), (e) => {
      assert.ok(e instanceof Anthropic.AuthenticationError);
      assert.equal(e.error.type, "error");
      assert.equal(e.error.error.type, "authentication_error");
      return true;
    });
    await assert.rejects(anthropic.messages.create({ model: "no-such-model", max_tokens: 8, messages: [{ role: "user", content: "x" }] }), (e) => {
      assert.ok(e instanceof Anthropic.NotFoundError);
      assert.equal(e.error.error.type, "not_found_error");
      return true;
    });
    await assert.rejects(anthropic.messages.create({ model, messages: [{ role: "user", content: "x" }] }), (e) => {
      assert.ok(e instanceof Anthropic.BadRequestError);
      assert.match(e.error.error.message, /max_tokens/);
      return true;
    });
    await assert.rejects(
      anthropic.messages.create({ model: `${model}-overloaded`, max_tokens: 8, messages: [{ role: "user", content: "x" }] }),
      (e) => {
        assert.equal(e.status, 529);
        assert.equal(e.error.error.type, "overloaded_error");
        return true;
      },
    );
  });
}

test("anthropic 429 for a key over its rate limit", async () => {
  const limited = new Anthropic({ baseURL: root, apiKey: limitedKey, maxRetries: 0 });
  const ask = () => limited.messages.create({ model: "e2e-chat", max_tokens: 8, messages: [{ role: "user", content: "x" }] });
  await ask();
  await assert.rejects(ask(), (e) => {
    assert.ok(e instanceof Anthropic.RateLimitError);
    assert.equal(e.error.error.type, "rate_limit_error");
    assert.ok(Number(e.headers.get("retry-after")) > 0);
    return true;
  });
});

test("anthropic stop_sequences end the answer with stop_sequence", async () => {
  const msg = await anthropic.messages.create({
    model: "e2e-claude",
    max_tokens: 64,
    stop_sequences: ["STOP"],
    messages: [{ role: "user", content: "go STOP here" }],
  });
  assert.equal(msg.content[0].text, "echo: go ");
  assert.equal(msg.stop_reason, "stop_sequence");
  assert.equal(msg.stop_sequence, "STOP");
});

test("anthropic count_tokens and models.retrieve", async () => {
  const counted = await anthropic.messages.countTokens({ model: "e2e-chat", messages: [{ role: "user", content: "hello world" }] });
  assert.ok(counted.input_tokens > 2, JSON.stringify(counted));
  const longer = await anthropic.messages.countTokens({
    model: "e2e-chat",
    messages: [{ role: "user", content: "hello world, and a good deal more text than before" }],
  });
  assert.ok(longer.input_tokens > counted.input_tokens);
  const model = await anthropic.models.retrieve("e2e-claude");
  assert.equal(model.id, "e2e-claude");
  assert.equal(model.type, "model");
});

test("anthropic messages relayed untranslated to kind anthropic: cache_control, documents, thinking signatures", async () => {
  // The fake answers "!request" with the body it got: the SDK's request, but for the model.
  const params = {
    model: "e2e-claude",
    max_tokens: 2048,
    thinking: { type: "enabled", budget_tokens: 1024 },
    system: [{ type: "text", text: "You answer from the contract.", cache_control: { type: "ephemeral" } }],
    messages: [
      {
        role: "user",
        content: [
          {
            type: "document",
            source: { type: "base64", media_type: "application/pdf", data: "JVBERi0xLjQK" },
            title: "contract.pdf",
            citations: { enabled: true },
            cache_control: { type: "ephemeral", ttl: "1h" },
          },
          { type: "text", text: "What is the term?" },
        ],
      },
      {
        role: "assistant",
        content: [
          { type: "thinking", thinking: "Section 2.", signature: "EqQBCgIYAhIM1gbcDa9GJwZA2b3h" },
          { type: "text", text: "Twelve months." },
        ],
      },
      { role: "user", content: [{ type: "text", text: "!request", cache_control: { type: "ephemeral" } }] },
    ],
  };
  const msg = await anthropic.messages.create(params);
  assert.equal(msg.model, "e2e-claude");
  assert.deepEqual(JSON.parse(msg.content[0].text), { ...params, model: "claude-upstream" });
  assert.deepEqual(msg.usage, { input_tokens: 2, cache_creation_input_tokens: 1, cache_read_input_tokens: 2, output_tokens: msg.usage.output_tokens });

  // Streamed: the SDK reads Anthropic's own event sequence.
  const stream = anthropic.messages.stream({ ...params, messages: [{ role: "user", content: "one two three" }] });
  const types = [];
  for await (const event of stream) types.push(event.type);
  const final = await stream.finalMessage();
  assert.deepEqual(types, [
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_delta",
    "content_block_delta",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
  ]);
  assert.equal(final.content[0].text, "echo: one two three");
  assert.equal(final.model, "e2e-claude");
  assert.deepEqual(final.usage, { input_tokens: 4, cache_creation_input_tokens: 1, cache_read_input_tokens: 2, output_tokens: 4 });
});

test("openai responses relayed untranslated to a native Responses API keep what chat cannot carry", async () => {
  const params = {
    model: "e2e-responses-native",
    previous_response_id: "resp_earlier",
    store: true,
    include: ["file_search_call.results"],
    tools: [{ type: "web_search_preview" }],
    input: "!request",
  };
  const res = await openai.responses.create(params);
  assert.equal(res.model, "e2e-responses-native");
  assert.equal(res.previous_response_id, "resp_earlier");
  assert.deepEqual(JSON.parse(res.output_text), { ...params, model: "native-upstream" });
  // The same request is refused where it would be translated.
  await assert.rejects(openai.responses.create({ ...params, model: "e2e-chat" }), (e) => e.status === 400);
});

for (const model of ["e2e-chat", "e2e-claude", "e2e-responses-native"]) {
  test(`openai responses.create (${model})`, async () => {
    const res = await openai.responses.create({ model, input: "hello", instructions: "be brief", metadata: { run: "e2e" } });
    assert.equal(res.object, "response");
    assert.equal(res.status, "completed");
    assert.equal(res.model, model);
    assert.equal(res.output_text, "echo: hello");
    assert.deepEqual(res.metadata, { run: "e2e" });
    assert.ok(res.usage.input_tokens > 0 && res.usage.output_tokens > 0);
  });

  test(`openai responses.create streaming (${model})`, async () => {
    const stream = await openai.responses.create({ model, input: [{ role: "user", content: "one two" }], stream: true });
    const types = [];
    let text = "";
    let completed = null;
    for await (const event of stream) {
      types.push(event.type);
      if (event.type === "response.output_text.delta") text += event.delta;
      if (event.type === "response.completed") completed = event.response;
    }
    assert.equal(text, "echo: one two");
    assert.equal(types[0], "response.created");
    assert.equal(types.at(-1), "response.completed");
    assert.equal(completed.output[0].content[0].text, "echo: one two");
    assert.ok(completed.usage.output_tokens > 0);
  });

  test(`openai responses with a function call (${model})`, async () => {
    const tools = [{ type: "function", name: "get_weather", parameters: weatherTool.input_schema, strict: false }];
    const res = await openai.responses.create({ model, input: "weather in Oslo", tools });
    const call = res.output.find((o) => o.type === "function_call");
    assert.equal(call.name, "get_weather");
    assert.deepEqual(JSON.parse(call.arguments), { text: "weather in Oslo" });
    const next = await openai.responses.create({
      model,
      tools,
      input: [
        { role: "user", content: "weather in Oslo" },
        { type: "function_call", call_id: call.call_id, name: call.name, arguments: call.arguments },
        { type: "function_call_output", call_id: call.call_id, output: "snow" },
      ],
    });
    assert.equal(next.output_text, "tool said: snow");
  });
}

test("openai responses refuse what chat completions cannot do, naming the field", async () => {
  await assert.rejects(openai.responses.create({ model: "e2e-chat", input: "x", previous_response_id: "resp_1" }), (e) => {
    assert.equal(e.status, 400);
    assert.equal(e.param, "previous_response_id");
    return true;
  });
});

test("openai models.retrieve", async () => {
  const m = await openai.models.retrieve("e2e-chat");
  assert.equal(m.id, "e2e-chat");
  assert.equal(m.object, "model");
  await assert.rejects(openai.models.retrieve("nope"), (e) => e instanceof OpenAI.NotFoundError);
});

test("openai chat in front of a kind anthropic backend: text, stream with usage, tools, 529", async () => {
  const res = await openai.chat.completions.create({ model: "e2e-claude", messages: [{ role: "user", content: "hi there" }] });
  assert.equal(res.choices[0].message.content, "echo: hi there");
  assert.ok(res.usage.prompt_tokens_details.cached_tokens > 0);
  const { response } = await openai.chat.completions
    .create({ model: "e2e-claude", messages: [{ role: "user", content: "x" }] })
    .withResponse();
  assert.equal(response.headers.get("x-tollgate-backend"), "claude");
  assert.equal(response.headers.get("x-tollgate-upstream-model"), "claude-upstream");

  const stream = await openai.chat.completions.create({
    model: "e2e-claude",
    messages: [{ role: "user", content: "a b c" }],
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = "";
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.choices.length > 0) text += chunk.choices[0].delta?.content ?? "";
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, "echo: a b c");
  assert.ok(usage.completion_tokens > 0);

  const tools = [{ type: "function", function: { name: "get_weather", parameters: weatherTool.input_schema } }];
  const called = await openai.chat.completions.create({ model: "e2e-claude", tools, messages: [{ role: "user", content: "w" }] });
  const call = called.choices[0].message.tool_calls[0];
  assert.deepEqual(JSON.parse(call.function.arguments), { text: "w" });
  const answered = await openai.chat.completions.create({
    model: "e2e-claude",
    tools,
    messages: [
      { role: "user", content: "w" },
      called.choices[0].message,
      { role: "tool", tool_call_id: call.id, content: "fog" },
    ],
  });
  assert.equal(answered.choices[0].message.content, "tool said: fog");

  await assert.rejects(
    openai.chat.completions.create({ model: "e2e-claude-overloaded", messages: [{ role: "user", content: "x" }] }),
    (e) => {
      assert.equal(e.status, 503);
      assert.equal(e.code, "overloaded");
      return true;
    },
  );
});

test("vercel ai sdk default provider (Responses API): generateText and streamText", async () => {
  const { text, usage } = await generateText({ model: vercel("e2e-chat"), prompt: "hello" });
  assert.equal(text, "echo: hello");
  assert.ok(usage.inputTokens > 0 && usage.outputTokens > 0);
  const result = streamText({ model: vercel("e2e-claude"), prompt: "streamed words" });
  let streamed = "";
  for await (const part of result.textStream) streamed += part;
  assert.equal(streamed, "echo: streamed words");
});

test("vercel ai sdk default provider in front of a native Responses API (relayed)", async () => {
  const { text, usage } = await generateText({ model: vercel("e2e-responses-native"), prompt: "hello" });
  assert.equal(text, "echo: hello");
  assert.ok(usage.inputTokens > 0 && usage.outputTokens > 0);
  const result = streamText({ model: vercel("e2e-responses-native"), prompt: "streamed words" });
  let streamed = "";
  for await (const part of result.textStream) streamed += part;
  assert.equal(streamed, "echo: streamed words");
});

test("vercel ai sdk tool loop and structured output (json_schema)", async () => {
  const { text, steps } = await generateText({
    model: vercel("e2e-chat"),
    prompt: "weather in Lima",
    tools: {
      get_weather: tool({
        description: "The weather in a city",
        inputSchema: z.object({ text: z.string() }),
        execute: async ({ text }) => `warm in ${text}`,
      }),
    },
    stopWhen: stepCountIs(3),
  });
  assert.equal(steps.length, 2);
  assert.equal(steps[0].toolCalls[0].input.text, "weather in Lima");
  assert.match(text, /^tool said: .*warm in weather in Lima/);
  const { object } = await generateObject({ model: vercel("e2e-chat"), schema: z.object({ echo: z.string() }), prompt: "structured" });
  assert.deepEqual(object, { echo: "structured" });
});

test("anthropic betas, default headers and anthropic-version reach a kind anthropic upstream; the client's key does not", async () => {
  const text = (msg) => JSON.parse(msg.content[0].text);
  const seen = text(
    await anthropic.beta.messages.create({
      model: "e2e-claude",
      max_tokens: 64,
      betas: ["prompt-caching-2024-07-31", "files-api-2025-04-14"],
      messages: [{ role: "user", content: "!headers" }],
    }),
  );
  assert.equal(seen["anthropic-beta"], "prompt-caching-2024-07-31,files-api-2025-04-14");
  // The SDK's own version (newer than the gateway's default of 2023-06-01) goes as it sent it.
  assert.match(seen["anthropic-version"], /^\d{4}-\d{2}-\d{2}$/);
  assert.notEqual(seen["anthropic-version"], "2023-06-01");
  assert.equal(seen["x-api-key"], "sk-ant-fake");
  assert.equal(seen.authorization, undefined);

  // A client's default headers, and a stream.
  const custom = new Anthropic({
    baseURL: root,
    apiKey,
    maxRetries: 0,
    defaultHeaders: { "anthropic-beta": "output-128k-2025-02-19", "anthropic-version": "2024-10-22" },
  });
  const stream = custom.messages.stream({ model: "e2e-claude", max_tokens: 64, messages: [{ role: "user", content: "!headers" }] });
  const streamed = text(await stream.finalMessage());
  assert.equal(streamed["anthropic-beta"], "output-128k-2025-02-19");
  assert.equal(streamed["anthropic-version"], "2024-10-22");
  assert.equal(streamed["x-api-key"], "sk-ant-fake");
});

test("openai responses.retrieve, inputItems.list, cancel and delete reach the native backend that stored the response", async () => {
  const created = await openai.responses.create({ model: "e2e-responses-native", input: "keep me" });
  const got = await openai.responses.retrieve(created.id);
  assert.equal(got.id, created.id);
  assert.equal(got.output_text, "echo: keep me");
  const items = await openai.responses.inputItems.list(created.id, { limit: 5 });
  assert.equal(items.data.length, 1);
  assert.equal(items.data[0].content[0].text, "keep me");

  // Another key may not see it.
  const other = new OpenAI({ baseURL, apiKey: limitedKey, maxRetries: 0 });
  await assert.rejects(other.responses.retrieve(created.id), (e) => {
    assert.ok(e instanceof OpenAI.NotFoundError);
    assert.equal(e.code, "response_not_found");
    return true;
  });

  await openai.responses.delete(created.id);
  await assert.rejects(openai.responses.retrieve(created.id), (e) => e instanceof OpenAI.NotFoundError);

  const background = await openai.responses.create({ model: "e2e-responses-background", input: "later", background: true });
  assert.equal(background.status, "queued");
  const cancelled = await openai.responses.cancel(background.id);
  assert.equal(cancelled.status, "cancelled");

  // A translated response is stored nowhere: a 404 that says so.
  const translated = await openai.responses.create({ model: "e2e-chat", input: "not kept" });
  await assert.rejects(openai.responses.retrieve(translated.id), (e) => {
    assert.ok(e instanceof OpenAI.NotFoundError);
    assert.match(e.message, /translated to chat completions are not stored/);
    return true;
  });
  // Asking a translation to store is refused by name.
  await assert.rejects(openai.responses.create({ model: "e2e-chat", input: "x", store: true }), (e) => {
    assert.equal(e.status, 400);
    assert.equal(e.param, "store");
    return true;
  });
});
