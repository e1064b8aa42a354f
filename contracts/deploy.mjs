// Deploys TributaryDistributor with the operator's key (the file `tributary keys new` writes,
// the same key the evm-merkle plugin signs with), and prints the ledger config for it:
//
//   node contracts/deploy.mjs RPC_URL KEY_FILE
//   {"adapter":"evm-merkle","config":{"rpc_url":...,"contract":...,"chain_id":...,"from_block":...}}
//
// PUT that to /v1/ledger (or `tributary ledger use evm-merkle --config ...`).
import { readFileSync } from "node:fs";
import { deploy, distributor, ethers } from "./solidity.mjs";

const [rpcUrl, keyFile] = process.argv.slice(2);
if (!rpcUrl || !keyFile) {
  console.error("usage: node contracts/deploy.mjs RPC_URL KEY_FILE");
  process.exit(2);
}
let secret = readFileSync(keyFile, "utf8").trim();
if (!secret.startsWith("0x")) secret = `0x${secret}`;
const provider = new ethers.JsonRpcProvider(rpcUrl);
const { chainId } = await provider.getNetwork();
const operator = new ethers.Wallet(secret, provider);
const { contract, block } = await deploy(distributor(), operator, operator.address);
console.log(JSON.stringify({
  adapter: "evm-merkle",
  config: { rpc_url: rpcUrl, contract: (await contract.getAddress()).toLowerCase(), chain_id: Number(chainId), from_block: block },
}));
provider.destroy();
