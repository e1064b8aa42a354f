// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {MessageHashUtils} from "@openzeppelin/contracts/utils/cryptography/MessageHashUtils.sol";

/// The check a signature-dispersal contract makes before paying a claim (as OpenLedger's
/// SigDispersal.claim(signature, batch, amount, onBehalfOf) does): the signer of
/// keccak256(abi.encodePacked(onBehalfOf, amount, batch, this contract, chain id)) under the
/// EIP-191 prefix. The tests compare it with the operator's address.
contract SigClaimCheck {
    function signerOf(bytes calldata signature, bytes32 batch, uint256 amount, address onBehalfOf)
        external
        view
        returns (address)
    {
        bytes32 message = keccak256(abi.encodePacked(onBehalfOf, amount, batch, address(this), block.chainid));
        return ECDSA.recover(MessageHashUtils.toEthSignedMessageHash(message), signature);
    }
}
