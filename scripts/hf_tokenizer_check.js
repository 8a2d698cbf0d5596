// The exported tokenizer.json under Hugging Face's own tokenizers library (its
// Rust core, through the npm package `tokenizers`, fetched by
// scripts/fetch_hf_tokenizers.sh): every string of
// tests/checkpoint/tokenizer_strings.json must encode exactly like
// `scalemoe tokenize --tokenizer OUT` and decode back to itself; the known
// differences are reported, not failed. Prints one JSON line; exit 1 on a
// difference.
//   usage: node scripts/hf_tokenizer_check.js NODE_MODULES_PARENT OUT SCALEMOE
'use strict';
const fs = require('fs');
const path = require('path');
const {execFileSync} = require('child_process');

if (process.argv.length !== 5) {
  console.error('usage: node hf_tokenizer_check.js NODE_MODULES_PARENT OUT SCALEMOE');
  process.exit(2);
}
const [modules, out, scalemoe] = process.argv.slice(2);
const {Tokenizer} = require(path.resolve(modules, 'node_modules', 'tokenizers'));
const cases = JSON.parse(fs.readFileSync(
    path.join(__dirname, '..', 'tests', 'checkpoint', 'tokenizer_strings.json'), 'utf8'));

function ours(text) {
  const ids = execFileSync(scalemoe, ['tokenize', '--tokenizer', out],
                           {input: Buffer.from(text, 'utf8')}).toString().trim();
  return ids ? ids.split(/\s+/).map(Number) : [];
}

(async () => {
  const tokenizer = Tokenizer.fromFile(path.join(out, 'tokenizer.json'));
  const theirs = async (text) => Array.from((await tokenizer.encode(text)).getIds());
  const failures = [];
  for (const text of cases.strings) {
    const a = ours(text), b = await theirs(text);
    const decoded = await tokenizer.decode(a, false);
    if (JSON.stringify(a) !== JSON.stringify(b) || decoded !== text) {
      failures.push({text, scalemoe: a, tokenizers: b, decoded});
    }
  }
  const known = [];
  for (const text of cases.known_differences) {
    if (JSON.stringify(ours(text)) !== JSON.stringify(await theirs(text))) known.push(text);
  }
  console.log(JSON.stringify({ok: failures.length === 0, strings: cases.strings.length,
                              known_differences: known, failures}));
  process.exit(failures.length === 0 ? 0 : 1);
})().catch((e) => {
  console.error(`hf_tokenizer_check: ${e.stack || e}`);
  process.exit(1);
});
