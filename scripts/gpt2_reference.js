// Reference GPT-2 encoder for tests/data/gpt2_reference_test.cc: encodes each
// string of a JSON array with the gpt-3-encoder package's own JavaScript
// encoder and writes a JSON array of id arrays.
//   usage: node scripts/gpt2_reference.js PACKAGE_DIR IN.json OUT.json
'use strict';
const fs = require('fs');
const path = require('path');

if (process.argv.length !== 5) {
  console.error('usage: node gpt2_reference.js PACKAGE_DIR IN.json OUT.json');
  process.exit(2);
}
const [packageDir, inPath, outPath] = process.argv.slice(2);
const {encode} = require(path.resolve(packageDir, 'Encoder.js'));
const texts = JSON.parse(fs.readFileSync(inPath, 'utf8'));
fs.writeFileSync(outPath, JSON.stringify(texts.map((t) => encode(t))));
