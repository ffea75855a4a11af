// Runs the README's shell, Node and Python snippets in order, as a reader would paste them,
// against a running tollgate. Usage: node run_snippets.mjs README.md HOST:PORT
// Python blocks run with python3 when it can import the openai package, and are reported skipped
// when it cannot (it is not among the test dependencies: `pip install openai` makes them run).
// Each ```sh / ```js / ```python block runs in the current folder (which holds build/ and data/ as
// deploy/demo.sh leaves them), with 127.0.0.1:8080 replaced by HOST:PORT. Marks on the lines just
// above a block: <!-- readme-test: skip (why) --> leaves it out; <!-- readme-test: expect "TEXT" -->
// requires TEXT in its output. Every block must exit 0 and print no "error".
import { readFileSync, writeFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import path from "node:path";

const [readmePath, hostPort] = process.argv.slice(2);
if (!readmePath || !hostPort) {
  console.error("usage: node run_snippets.mjs README.md HOST:PORT");
  process.exit(2);
}

const lines = readFileSync(readmePath, "utf8").split("\n");
const blocks = [];
let marks = [];
for (let i = 0; i < lines.length; i++) {
  const mark = lines[i].match(/^<!-- readme-test: (.*) -->$/);
  if (mark) {
    marks.push({ text: mark[1], line: i + 1 });
    continue;
  }
  const fence = lines[i].match(/^```(\w*)\s*$/);
  if (!fence) {
    if (lines[i].trim() !== "") marks = [];  // a mark belongs to the block right below it
    continue;
  }
  const start = i + 1;
  const body = [];
  for (i++; i < lines.length && !lines[i].startsWith("```"); i++) body.push(lines[i]);
  blocks.push({ lang: fence[1], line: start, code: body.join("\n") + "\n", marks });
  marks = [];
}

let failures = 0;
const ran = { sh: 0, js: 0, py: 0 };
const pythonOpenai = spawnSync("python3", ["-c", "import openai"], { encoding: "utf8" }).status === 0;
for (const block of blocks) {
  const lang = { sh: "sh", bash: "sh", shell: "sh", js: "js", javascript: "js", mjs: "js", python: "py", py: "py" }[block.lang];
  let skip = false;
  const expects = [];
  for (const m of block.marks) {
    const expect = m.text.match(/^expect "(.*)"$/);
    if (m.text.startsWith("skip")) skip = true;
    else if (expect) expects.push(expect[1]);
    else {
      console.log(`README.md:${m.line}: unknown readme-test mark: ${m.text}`);
      failures++;
    }
  }
  if (!lang) {
    if (expects.length > 0) {
      console.log(`README.md:${block.line}: an expect mark on a ${block.lang || "plain"} block, which is not run`);
      failures++;
    }
    continue;
  }
  if (skip) {
    console.log(`README.md:${block.line}: ${lang} block skipped (${block.marks.map((m) => m.text).join("; ")})`);
    continue;
  }
  if (lang === "py" && !pythonOpenai) {
    console.log(`README.md:${block.line}: py block skipped (python3 cannot import openai: pip install openai)`);
    continue;
  }
  const code = block.code.replaceAll("127.0.0.1:8080", hostPort);
  let result;
  if (lang === "py") {
    result = spawnSync("python3", ["-c", code], { encoding: "utf8", timeout: 120_000 });
  } else if (lang === "sh") {
    result = spawnSync("bash", ["-eo", "pipefail", "-c", code], { encoding: "utf8", timeout: 120_000 });
  } else {
    // Saved beside node_modules, as the README says: an ES module (.mjs) run with node.
    const file = path.resolve(`snippet-${block.line}.mjs`);
    writeFileSync(file, code);
    result = spawnSync("node", [file], { encoding: "utf8", timeout: 120_000 });
  }
  ran[lang]++;
  const output = (result.stdout ?? "") + (result.stderr ?? "");
  const problems = [];
  if (result.error) problems.push(`did not run: ${result.error.message}`);
  if (result.status !== 0) problems.push(`exit status ${result.status}`);
  if (output.includes('"error"')) problems.push('printed an "error"');
  for (const e of expects) if (!output.includes(e)) problems.push(`did not print "${e}"`);
  if (lang !== "sh" && output.trim() === "") problems.push("printed nothing");
  if (problems.length > 0) {
    failures++;
    console.log(`FAIL README.md:${block.line}: ${lang} block: ${problems.join("; ")}\n--- code\n${code}--- output\n${output}---`);
  } else {
    console.log(`ok README.md:${block.line}: ${lang} block`);
  }
}
if (ran.sh === 0 || ran.js === 0) {
  console.log(`expected shell and Node blocks to run; ran ${ran.sh} sh and ${ran.js} js`);
  failures++;
}
console.log(`readme snippets: ${ran.sh} sh, ${ran.js} js and ${ran.py} python blocks run, ${failures} failures`);
process.exit(failures === 0 ? 0 : 1);
