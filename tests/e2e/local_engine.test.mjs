// The openai SDK against a tollgate serving a tiny random DeepSeek-V3 checkpoint with its bundled
// engine on the CPU. References come from `tollgate-engine generate` (see local_engine.sh).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import Anthropic from "@anthropic-ai/sdk";
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.TOLLGATE_BASE_URL, apiKey: process.env.TOLLGATE_KEY, maxRetries: 0 });
const refs = JSON.parse(readFileSync(process.env.TOLLGATE_REFS, "utf8"));
const prompts = ["hello there", "write a haiku about gateways", "你好，世界", "a"];
const model = "tiny-deepseek";
const greedy = (content, extra = {}) =>
  client.chat.completions.create({ model, temperature: 0, max_tokens: 24, messages: [{ role: "user", content }], ...extra });

async function metric(line) {
  const text = await (await fetch(`${process.env.TOLLGATE_URL}/metrics`)).text();
  const found = text.split("\n").find((l) => l.startsWith(line + " "));
  return found ? Number(found.split(" ")[1]) : 0;
}

test("the model is listed", async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.deepEqual(ids.sort(), ["broken-model", "slow-deepseek", "small-pool", "tiny-deepseek", "tiny-nocache"]);
});

test("greedy chat equals the engine CLI, token counts included", async () => {
  for (let i = 0; i < prompts.length; i++) {
    const res = await greedy(prompts[i]);
    assert.equal(res.object, "chat.completion");
    assert.equal(res.model, model);
    assert.equal(res.choices[0].message.role, "assistant");
    assert.equal(res.choices[0].message.content, refs[i].text, `prompt ${i}`);
    assert.equal(res.choices[0].finish_reason, refs[i].finish_reason);
    assert.equal(res.usage.prompt_tokens, refs[i].prompt_tokens);
    // The CLI leaves out the end-of-sentence token; usage counts it, as other servers do.
    const eos = refs[i].finish_reason === "stop" ? 1 : 0;
    assert.equal(res.usage.completion_tokens, refs[i].tokens.length + eos);
    assert.equal(res.usage.total_tokens, refs[i].prompt_tokens + refs[i].tokens.length + eos);
  }
});

test("the Anthropic SDK gets the same greedy answers, whole and streamed", async () => {
  const anthropic = new Anthropic({ baseURL: process.env.TOLLGATE_URL, apiKey: process.env.TOLLGATE_KEY, maxRetries: 0 });
  for (let i = 0; i < prompts.length; i++) {
    const params = { model, temperature: 0, max_tokens: 24, messages: [{ role: "user", content: prompts[i] }] };
    const msg = await anthropic.messages.create(params);
    assert.equal(msg.model, model);
    assert.equal(msg.content[0].text, refs[i].text, `prompt ${i}`);
    assert.equal(msg.stop_reason, refs[i].finish_reason === "stop" ? "end_turn" : "max_tokens");
    assert.equal(msg.usage.input_tokens, refs[i].prompt_tokens);
    const stream = anthropic.messages.stream(params);
    const final = await stream.finalMessage();
    assert.equal(final.content[0]?.text ?? "", refs[i].text, `streamed prompt ${i}`);
    assert.equal(final.usage.input_tokens, refs[i].prompt_tokens);
    assert.ok(final.usage.output_tokens > 0);
  }
});

test("concurrent requests share the engine and each still equals its reference", async () => {
  const all = await Promise.all([...prompts, ...prompts].map((p) => greedy(p)));
  all.forEach((res, j) => assert.equal(res.choices[0].message.content, refs[j % prompts.length].text, `request ${j}`));
});

test("seeded sampling gives the same answer alone and batched with others", async () => {
  const ask = (seed, content) => client.chat.completions.create({
    model, temperature: 0.9, top_p: 0.95, seed, max_tokens: 16, ignore_eos: true, messages: [{ role: "user", content }],
  });
  const alone = [];
  for (let i = 0; i < 6; i++) alone.push((await ask(100 + i, prompts[i % prompts.length])).choices[0].message.content);
  const together = await Promise.all([0, 1, 2, 3, 4, 5].map((i) => ask(100 + i, prompts[i % prompts.length])));
  together.forEach((res, i) => assert.equal(res.choices[0].message.content, alone[i], `request ${i}`));
  assert.equal(await metric('tollgate_engine_kv_blocks{backend="tiny",state="used"}'), 0);
  assert.ok(await metric('tollgate_engine_steps_total{backend="tiny"}') > 0);
});

test("a stream arrives token by token and ends with usage", async () => {
  const stream = await greedy(prompts[1], { stream: true, stream_options: { include_usage: true } });
  let text = "";
  let chunks = 0;
  let usage = null;
  let finish = null;
  for await (const chunk of stream) {
    chunks += 1;
    if (chunk.choices.length > 0) {
      text += chunk.choices[0].delta?.content ?? "";
      finish = chunk.choices[0].finish_reason ?? finish;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, refs[1].text);
  assert.equal(finish, refs[1].finish_reason);
  assert.ok(chunks >= 8, `expected many chunks, got ${chunks}`);
  assert.equal(usage.completion_tokens, refs[1].tokens.length);
  assert.equal(usage.prompt_tokens, refs[1].prompt_tokens);
});

test("a stop string cuts the answer before it", async () => {
  const full = refs[0].text;
  const chars = [...full];
  const stop = chars.slice(6, 9).join("");
  const res = await greedy(prompts[0], { stop: [stop] });
  assert.equal(res.choices[0].message.content, full.slice(0, full.indexOf(stop)));
  assert.equal(res.choices[0].finish_reason, "stop");
});

test("a seed makes sampling repeatable", async () => {
  const ask = (seed) => client.chat.completions.create({
    model, temperature: 0.9, top_p: 0.95, seed, max_tokens: 16, ignore_eos: true, messages: [{ role: "user", content: "roll" }],
  });
  const [a, b, c] = [await ask(42), await ask(42), await ask(43)];
  assert.equal(a.choices[0].message.content, b.choices[0].message.content);
  assert.notEqual(a.choices[0].message.content, c.choices[0].message.content);
  assert.equal(a.usage.completion_tokens, 16);
});

test("text completions", async () => {
  const res = await client.completions.create({ model, prompt: "once upon", max_tokens: 10, temperature: 0 });
  assert.equal(res.object, "text_completion");
  assert.equal(res.usage.completion_tokens, 10);
  assert.equal(res.choices[0].finish_reason, "length");
});

test("a client that leaves mid-stream cancels its sequence", async () => {
  const generated = () => metric('tollgate_engine_generated_tokens_total{backend="slow"}');
  const cancelled = () => metric('tollgate_engine_sequences_total{backend="slow",outcome="cancelled"}');
  const billed = () => metric('tollgate_tokens_total{key="e2e",model="slow-deepseek",backend="slow",kind="completion"}');
  const [gen0, cancel0] = [await generated(), await cancelled()];
  const ctl = new AbortController();
  const stream = await client.chat.completions.create(
    { model: "slow-deepseek", max_tokens: 1500, ignore_eos: true, temperature: 0, stream: true,
      messages: [{ role: "user", content: "go on" }] },
    { signal: ctl.signal });
  let seen = 0;
  for await (const chunk of stream) {  // the SDK ends the loop quietly on abort
    if (chunk.choices[0]?.delta?.content !== undefined && ++seen === 3) ctl.abort();
  }
  assert.equal(seen, 3);
  let cancel1 = cancel0;
  for (let i = 0; i < 100 && cancel1 === cancel0; i++) {
    await new Promise((r) => setTimeout(r, 20));
    cancel1 = await cancelled();
  }
  assert.equal(cancel1, cancel0 + 1, "the engine did not drop the sequence");
  const gen1 = await generated();
  assert.ok(gen1 - gen0 < 750, `the engine went on to ${gen1 - gen0} of 1500 tokens`);
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(await generated(), gen1, "tokens still being generated after the cancel");
  assert.equal(await metric('tollgate_engine_sequences_running{backend="slow"}'), 0);
  // What was delivered is billed, counted by the gateway's tokenizer since no usage chunk came:
  // something, and not the 1500 asked for.
  let bill = 0;
  for (let i = 0; i < 100 && bill === 0; i++) {
    await new Promise((r) => setTimeout(r, 20));
    bill = await billed();
  }
  assert.ok(bill >= 1 && bill < 750, `billed ${bill}, generated ${gen1 - gen0}`);
});

test("bad input gets an OpenAI-shaped 400", async () => {
  await assert.rejects(greedy("x", { max_tokens: -1 }), (e) => e.status === 400 && e.error?.param === "max_tokens");
  await assert.rejects(greedy("x", { n: 2 }), (e) => e.status === 400 && e.error?.param === "n");
  await assert.rejects(greedy("x", { tools: [{ type: "function", function: { name: "f", parameters: {} } }] }),
    (e) => e.status === 400 && e.error?.param === "tools");
  await assert.rejects(
    client.chat.completions.create({ model, messages: [{ role: "tool", tool_call_id: "1", content: "x" }] }),
    (e) => e.status === 400 && /'tool'/.test(e.message));
  await assert.rejects(greedy("word ".repeat(600)), (e) => e.status === 400 && e.code === "context_length_exceeded");
});

test("a shared system prompt is computed once and answers as without prefix caching", async () => {
  const system = "You are a careful assistant for a toll road operator. " +
    "Answer in short sentences, name the rule you follow, and never invent prices or opening hours. ".repeat(3);
  const ask = (m, content, seed) => client.chat.completions.create({
    model: m, temperature: 0.8, seed, max_tokens: 12, ignore_eos: true,
    messages: [{ role: "system", content: system }, { role: "user", content }] });
  const looked = () => metric('tollgate_engine_prefix_cache_lookup_tokens_total{backend="tiny"}');
  const hits = () => metric('tollgate_engine_prefix_cache_hit_tokens_total{backend="tiny"}');
  const [look0, hit0] = [await looked(), await hits()];
  const questions = ["how much is it", "when do you open", "how much is it"];
  for (let i = 0; i < questions.length; i++) {
    const cached = await ask(model, questions[i], 40 + i);
    const plain = await ask("tiny-nocache", questions[i], 40 + i);
    assert.equal(cached.choices[0].message.content, plain.choices[0].message.content, `question ${i}`);
    assert.equal(cached.usage.prompt_tokens, plain.usage.prompt_tokens);
    assert.ok(cached.usage.prompt_tokens > 200, `a system prompt of ${cached.usage.prompt_tokens} tokens`);
  }
  // The system prompt's full blocks of 64 positions are found by the second and third requests.
  assert.ok(await hits() - hit0 >= 2 * 3 * 64, `hits ${await hits() - hit0}`);
  assert.ok(await looked() - look0 > await hits() - hit0);
  assert.equal(await metric('tollgate_engine_prefix_cache_hit_tokens_total{backend="nocache"}'), 0);
  assert.equal(await metric('tollgate_engine_kv_blocks{backend="tiny",state="used"}'), 0);
  assert.ok(await metric('tollgate_engine_kv_blocks{backend="tiny",state="cached"}') >= 3);
});

test("a full KV pool queues requests, and past max_queue the answer is 503 overloaded", async () => {
  const ask = () => client.chat.completions.create({
    model: "small-pool", temperature: 0, max_tokens: 100, ignore_eos: true, messages: [{ role: "user", content: "go" }] });
  const results = await Promise.allSettled(Array.from({ length: 8 }, ask));
  const ok = results.filter((r) => r.status === "fulfilled").map((r) => r.value);
  const refused = results.filter((r) => r.status === "rejected").map((r) => r.reason);
  // max_batch 2 + max_queue 1 are taken while the pool runs one sequence at a time; the rest are refused.
  assert.equal(ok.length, 3, refused.map((e) => e.message).join("; "));
  for (const e of refused) {
    assert.equal(e.status, 503);
    assert.equal(e.code, "overloaded");
  }
  // The queued ones were served in turn, none failed: the same greedy answer for each.
  for (const r of ok) {
    assert.equal(r.usage.completion_tokens, 100);
    assert.equal(r.choices[0].message.content, ok[0].choices[0].message.content);
  }
  assert.equal(await metric('tollgate_engine_sequences_total{backend="small-pool",outcome="failed"}'), 0);
  // Once they are done the backend takes requests again.
  assert.equal((await ask()).usage.completion_tokens, 100);
});

test("a checkpoint that failed to load answers 503 and the readiness probe says so", async () => {
  await assert.rejects(
    client.chat.completions.create({ model: "broken-model", messages: [{ role: "user", content: "x" }] }),
    (e) => e.status === 503 && /no-such-folder/.test(e.message));
  const ready = await (await fetch(`${process.env.TOLLGATE_URL}/readyz`)).json();
  assert.deepEqual(ready.backends, { tiny: "up", slow: "up", broken: "down", nocache: "up", "small-pool": "up" });
});
