// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";

/// @title Pays out Tributary's closed epochs on chain.
/// @notice The operator publishes each epoch's payout root together with the epoch's total in
/// ether (the `evm-merkle` ledger adapter does this); every account then claims its amount
/// once, with the proof `GET /v1/epochs/{n}/claims/{address}` returns. Leaves are OpenZeppelin
/// `StandardMerkleTree` leaves of `(address, uint256)`.
contract TributaryDistributor {
    address public immutable operator;

    mapping(uint64 epoch => bytes32) public roots;
    mapping(uint64 epoch => uint256) public totals;
    mapping(uint64 epoch => uint256) public paid;
    mapping(uint64 epoch => bool) public published;
    mapping(uint64 epoch => mapping(address account => bool)) public claimed;

    event RootPublished(uint64 indexed epoch, bytes32 root, uint256 total);
    event Claimed(uint64 indexed epoch, address indexed account, uint256 amount);

    error NotOperator(address sender);
    error AlreadyPublished(uint64 epoch);
    error WrongFunding(uint256 sent, uint256 total);
    error UnknownEpoch(uint64 epoch);
    error AlreadyClaimed(uint64 epoch, address account);
    error InvalidProof();
    error OverPaid(uint64 epoch, uint256 paid, uint256 total);
    error TransferFailed(address account);

    constructor(address operator_) {
        operator = operator_;
    }

    /// Publishes `epoch` once; `msg.value` must be its total, which the claims pay out.
    function publish(uint64 epoch, bytes32 root, uint256 total) external payable {
        if (msg.sender != operator) revert NotOperator(msg.sender);
        // Once only: a second publication would fund the epoch twice.
        if (published[epoch]) revert AlreadyPublished(epoch);
        if (msg.value != total) revert WrongFunding(msg.value, total);
        published[epoch] = true;
        roots[epoch] = root;
        totals[epoch] = total;
        emit RootPublished(epoch, root, total);
    }

    /// Pays `account` its `amount` for `epoch`; anyone may send it on the account's behalf.
    function claim(uint64 epoch, address account, uint256 amount, bytes32[] calldata proof) external {
        if (!published[epoch]) revert UnknownEpoch(epoch);
        if (claimed[epoch][account]) revert AlreadyClaimed(epoch, account);
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(account, amount))));
        if (!MerkleProof.verify(proof, roots[epoch], leaf)) revert InvalidProof();
        // Each epoch pays out of its own funding, whatever its root says.
        uint256 total = paid[epoch] + amount;
        if (total > totals[epoch]) revert OverPaid(epoch, total, totals[epoch]);
        paid[epoch] = total;
        claimed[epoch][account] = true;
        emit Claimed(epoch, account, amount);
        (bool sent,) = account.call{value: amount}("");
        if (!sent) revert TransferFailed(account);
    }
}
