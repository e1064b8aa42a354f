// The JavaScript peer of epoch close: @openzeppelin/merkle-tree builds the payout tree over
// the same (address, uint256) leaves our bench wrote, then gives every proof. Prints JSON.
//
//   node bench/rewards/close.mjs LEAVES_FILE
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, "../../tests/crosscheck/package.json"));
const { StandardMerkleTree } = require("@openzeppelin/merkle-tree");

const values = readFileSync(process.argv[2], "utf8")
  .split("\n")
  .filter((l) => l.length > 0)
  .map((l) => l.split(","));
let t = process.hrtime.bigint();
const tree = StandardMerkleTree.of(values, ["address", "uint256"]);
const tree_s = Number(process.hrtime.bigint() - t) / 1e9;
t = process.hrtime.bigint();
let nodes = 0;
for (let i = 0; i < values.length; i++) nodes += tree.getProof(i).length;
const proofs_s = Number(process.hrtime.bigint() - t) / 1e9;
console.log(JSON.stringify({ accounts: values.length, root: tree.root, tree_s, proofs_s, tree_and_proofs_s: tree_s + proofs_s, proof_nodes: nodes }));
