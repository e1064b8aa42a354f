// A local EVM chain for the settlement tests: ganache on 127.0.0.1, with Tributary's
// distributor contract and a signature-claim checker compiled by solc-js against
// OpenZeppelin's contracts and deployed by the operator.
//
//   node evm_chain.mjs PORT OPERATOR_SECRET_KEY_HEX
//
// Prints one JSON line when ready ({rpc_url, chain_id, operator, distributor, sigclaim, and
// foreign: a distributor whose operator is another account}),
// then answers one JSON line for each request line on stdin, until stdin closes:
//   {"op": "claim", "epoch", "account", "amount", "proof"}     -> {ok, gained} | {ok: false, error}
//   {"op": "epoch", "epoch"}                                   -> {published, root, total}
//   {"op": "signer", "signature", "batch", "amount", "account"} -> {signer}
//   {"op": "publish", "epoch", "root", "total"}  (by the operator)  -> {tx} | {error}
//   {"op": "balance", "account"}  ("distributor" for the contract) -> {balance}
//   {"op": "snapshot"} -> {id};  {"op": "revert", "id"} -> {reverted}  (the chain as it was)
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";
import { compile, deploy, ethers } from "../../contracts/solidity.mjs";

const require = createRequire(import.meta.url);
const ganache = require("ganache");

const here = dirname(fileURLToPath(import.meta.url));
const CHAIN_ID = 31337;
const [port, operatorKey] = process.argv.slice(2);
if (!port || !operatorKey) {
  console.error("usage: node evm_chain.mjs PORT OPERATOR_SECRET_KEY_HEX");
  process.exit(2);
}
const secret = operatorKey.startsWith("0x") ? operatorKey : `0x${operatorKey}`;
const relayer = ethers.Wallet.createRandom();
const ether = (n) => `0x${(BigInt(n) * 10n ** 18n).toString(16)}`;

const server = ganache.server({
  chain: { chainId: CHAIN_ID },
  wallet: { accounts: [{ secretKey: secret, balance: ether(1000) }, { secretKey: relayer.privateKey, balance: ether(1000) }] },
  miner: { instamine: "eager" },
  logging: { quiet: true },
});
await server.listen(Number(port), "127.0.0.1");
const rpcUrl = `http://127.0.0.1:${port}`;
// No cache: a balance read just before and after a claim must both go to the node.
const provider = new ethers.JsonRpcProvider(rpcUrl, CHAIN_ID, { staticNetwork: true, pollingInterval: 20, cacheTimeout: -1 });
// Each wallet counts its own nonces: the provider's cached count goes stale between blocks.
const operator = new ethers.NonceManager(new ethers.Wallet(secret, provider));
const sender = new ethers.NonceManager(relayer.connect(provider));

const built = compile([join(here, "../../contracts/TributaryDistributor.sol"), join(here, "contracts/SigClaimCheck.sol")]);
// Deployed as an operator would, with contracts/solidity.mjs (what contracts/deploy.mjs uses).
const { contract: distributor } = await deploy(built.TributaryDistributor, operator, await operator.getAddress());
const { contract: sigclaim } = await deploy(built.SigClaimCheck, operator);
// A distributor whose operator is someone else: it refuses the operator's publications.
const { contract: foreign } = await deploy(built.TributaryDistributor, operator, relayer.address);
const asRelayer = distributor.connect(sender);

console.log(JSON.stringify({
  rpc_url: rpcUrl,
  chain_id: CHAIN_ID,
  operator: (await operator.getAddress()).toLowerCase(),
  distributor: (await distributor.getAddress()).toLowerCase(),
  sigclaim: (await sigclaim.getAddress()).toLowerCase(),
  foreign: (await foreign.getAddress()).toLowerCase(),
}));

// ethers finds no revert data in ganache's answer to eth_estimateGas: it is one level down.
const reason = (e) => {
  const data = e.data ?? e.info?.error?.data?.result;
  const decoded = e.revert ?? (data ? distributor.interface.parseError(data) : null);
  return decoded ? `${decoded.name}(${decoded.args.join(", ")})` : e.shortMessage ?? e.message;
};

async function answer(req) {
  switch (req.op) {
    case "claim": {
      const account = req.account.toLowerCase();
      const before = await provider.getBalance(account);
      // A refused claim fails before it is sent but has counted its nonce: count afresh.
      sender.reset();
      try {
        const tx = await asRelayer.claim(req.epoch, account, req.amount, req.proof);
        const receipt = await tx.wait();
        if (receipt.status !== 1) return { ok: false, error: "reverted" };
      } catch (e) {
        return { ok: false, error: reason(e) };
      }
      return { ok: true, gained: ((await provider.getBalance(account)) - before).toString() };
    }
    case "epoch":
      return {
        published: await distributor.published(req.epoch),
        root: await distributor.roots(req.epoch),
        total: (await distributor.totals(req.epoch)).toString(),
      };
    case "signer":
      return { signer: (await sigclaim.signerOf(req.signature, req.batch, req.amount, req.account.toLowerCase())).toLowerCase() };
    case "publish": {
      // The engine sends from the same key: count its nonce afresh.
      operator.reset();
      try {
        const tx = await distributor.publish(req.epoch, req.root, req.total, { value: req.total });
        await tx.wait();
        return { tx: tx.hash };
      } catch (e) {
        return { error: reason(e) };
      }
    }
    case "balance": {
      const who = req.account === "distributor" ? await distributor.getAddress() : req.account.toLowerCase();
      return { balance: (await provider.getBalance(who)).toString() };
    }
    case "snapshot":
      return { id: await provider.send("evm_snapshot", []) };
    case "revert":
      return { reverted: await provider.send("evm_revert", [req.id]) };
    default:
      return { error: `unknown op ${JSON.stringify(req.op)}` };
  }
}

for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  let reply;
  try {
    reply = await answer(JSON.parse(line));
  } catch (e) {
    reply = { error: e.message };
  }
  console.log(JSON.stringify(reply));
}
await server.close();
