// Compiling and deploying the contracts with solc-js and ethers, from the npm packages that
// `./dev` installs under tests/crosscheck/node_modules (solc 0.8.37, ethers 6,
// @openzeppelin/contracts 5.7). Used by deploy.mjs and by the settlement test's local chain.
import { createRequire } from "node:module";
import { existsSync, readFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const packages = join(here, "../tests/crosscheck");
if (!existsSync(join(packages, "node_modules/solc"))) {
  throw new Error(`solc-js is not installed in ${packages}/node_modules: run ./dev test once, or npm ci there`);
}
const require = createRequire(join(packages, "package.json"));
export const solc = require("solc");
export const { ethers } = require("ethers");

/// Compiles Solidity files (paths) with the optimizer on; answers { ContractName: { abi, bytecode } }.
export function compile(paths) {
  const sources = Object.fromEntries(paths.map((p) => [basename(p), { content: readFileSync(p, "utf8") }]));
  const input = {
    language: "Solidity",
    sources,
    settings: { optimizer: { enabled: true, runs: 200 }, outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } } },
  };
  const findImports = (path) => {
    try {
      return { contents: readFileSync(join(packages, "node_modules", path), "utf8") };
    } catch (e) {
      return { error: `${path}: ${e.message}` };
    }
  };
  const out = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
  const errors = (out.errors ?? []).filter((e) => e.severity === "error");
  if (errors.length) throw new Error(errors.map((e) => e.formattedMessage).join("\n"));
  const built = {};
  for (const file of Object.values(out.contracts)) {
    for (const [name, c] of Object.entries(file)) built[name] = { abi: c.abi, bytecode: c.evm.bytecode.object };
  }
  return built;
}

/// The distributor, compiled.
export function distributor() {
  return compile([join(here, "TributaryDistributor.sol")]).TributaryDistributor;
}

/// Deploys a compiled contract with `signer`; answers the contract and its deployment block.
export async function deploy(built, signer, ...args) {
  const contract = await new ethers.ContractFactory(built.abi, built.bytecode, signer).deploy(...args);
  const receipt = await contract.deploymentTransaction().wait();
  return { contract, block: receipt.blockNumber };
}
