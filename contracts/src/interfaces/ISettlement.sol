// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

/// @title Settlement: buyers' escrow, providers' stake and earnings, epoch-by-epoch settlement
/// @notice Buyers deposit the payment token into escrow; providers bind their EVM address to
///         their Ed25519 receipt-signing key and stake the network token. The operator settles
///         each epoch in one batch: buyers' escrow pays providers per verified token, a fee goes
///         to the protocol, network-token rewards are minted, and the Merkle root of the epoch's
///         receipts is recorded so anyone can check that a receipt was counted.
interface ISettlement {
    /// @notice One buyer's charge in an epoch, in payment-token base units.
    struct Debit {
        address buyer;
        uint256 amount;
    }

    /// @notice One provider's earnings (or reward) in an epoch.
    struct Credit {
        address provider;
        uint256 amount;
    }

    /// @notice Everything one epoch settles; debits must equal credits plus fee.
    struct EpochBatch {
        uint64 epoch;
        bytes32 receiptsRoot;
        uint64 receiptCount;
        uint256 fee;
        Debit[] debits;
        Credit[] credits;
        Credit[] rewards;
    }

    /// @notice A pending withdrawal of escrow or unstake of stake, usable from `availableAt`,
    ///         and not before a full delay has passed since the contract was last unpaused.
    struct PendingExit {
        uint192 amount;
        uint64 availableAt;
    }

    // ----------------------------------------------------------------------------------------
    // Errors
    // ----------------------------------------------------------------------------------------

    /// @notice An amount that must be positive was zero.
    error ZeroAmount();
    /// @notice An address that must be set was zero.
    error ZeroAddress();
    /// @notice An amount does not fit the 192 bits a pending exit holds.
    error AmountTooLarge(uint256 amount);
    /// @notice `buyer` has `available` in escrow and `requested` was asked of it.
    error InsufficientEscrow(address buyer, uint256 available, uint256 requested);
    /// @notice `account` has no pending withdrawal or unstake to complete.
    error NoPendingExit(address account);
    /// @notice The pending exit of `account` is usable only from `availableAt`: its own time,
    ///         or a full delay after the last unpause where that is later.
    error ExitNotReady(address account, uint64 availableAt);
    /// @notice Nothing is left to pay out to `account`.
    error NothingToWithdraw(address account);
    /// @notice `provider` already bound a key.
    error ProviderAlreadyRegistered(address provider);
    /// @notice `provider` never bound a key.
    error UnknownProvider(address provider);
    /// @notice The Ed25519 public key given was zero.
    error ZeroKey();
    /// @notice A key rotation named the key already bound.
    error SameKey(bytes32 ed25519Key);
    /// @notice `provider` has `staked` and `requested` was asked of it.
    error InsufficientStake(address provider, uint256 staked, uint256 requested);
    /// @notice Epoch `epoch` was settled already (a replay).
    error EpochAlreadySettled(uint64 epoch);
    /// @notice Epochs settle strictly in order: `expected` is next, `got` was submitted.
    error EpochOutOfOrder(uint64 expected, uint64 got);
    /// @notice The batch's debits do not equal its credits plus fee.
    error UnbalancedBatch(uint256 debits, uint256 credits, uint256 fee);
    /// @notice The fee exceeds the most the protocol may take from these debits.
    error FeeExceedsLimit(uint256 fee, uint256 limit);
    /// @notice The rewards of one epoch exceed the cap.
    error RewardCapExceeded(uint256 total, uint256 cap);
    /// @notice Rewards were already minted less than the minimum epoch interval ago; the next
    ///         rewards may be minted from `availableAt`.
    error RewardsTooSoon(uint64 availableAt);
    /// @notice This evidence was already used for a slash.
    error EvidenceAlreadyUsed(bytes32 evidenceHash);
    /// @notice A configuration value is out of its allowed range.
    error InvalidConfig(string field);

    // ----------------------------------------------------------------------------------------
    // Events
    // ----------------------------------------------------------------------------------------

    /// @notice `buyer`'s escrow grew by `amount`, paid by `payer`.
    event Deposited(address indexed buyer, address indexed payer, uint256 amount, uint256 escrow);
    /// @notice `buyer` asked to withdraw `amount` from `availableAt` (later if a pause comes
    ///         between: the withdrawal then waits a full delay after the unpause).
    event WithdrawalRequested(address indexed buyer, uint256 amount, uint64 availableAt);
    /// @notice `buyer` took `amount` out of escrow.
    event Withdrawn(address indexed buyer, uint256 amount);
    /// @notice `provider` bound its Ed25519 receipt-signing key.
    event ProviderRegistered(address indexed provider, bytes32 ed25519Key);
    /// @notice `provider` replaced `oldKey` with `newKey`: messages signed by `oldKey` are void.
    event ProviderKeyRotated(address indexed provider, bytes32 oldKey, bytes32 newKey);
    /// @notice `provider` staked `amount`, now holding `stake`.
    event Staked(address indexed provider, uint256 amount, uint256 stake);
    /// @notice `provider` asked to unstake `amount` from `availableAt` (later if a pause comes
    ///         between: the unstake then waits a full delay after the unpause).
    event UnstakeRequested(address indexed provider, uint256 amount, uint64 availableAt);
    /// @notice `provider` took `amount` of stake back.
    event Unstaked(address indexed provider, uint256 amount);
    /// @notice Epoch `epoch` settled.
    event EpochSettled(
        uint64 indexed epoch, bytes32 receiptsRoot, uint64 receiptCount, uint256 debited, uint256 fee, uint256 rewards
    );
    /// @notice `provider`'s reward of `amount` in epoch `epoch` was not minted: when the batch
    ///         was mined the provider was not active (less than the minimum stake left once its
    ///         pending unstake is taken off). The rest of the epoch settles.
    event RewardForfeited(uint64 indexed epoch, address indexed provider, uint256 amount);
    /// @notice `provider` withdrew `amount` of earnings.
    event EarningsWithdrawn(address indexed provider, uint256 amount);
    /// @notice The protocol's accrued fees, `amount`, went to `to`.
    event FeesWithdrawn(address indexed to, uint256 amount);
    /// @notice `verifier` slashed `amount` of `provider`'s stake for `evidenceHash`.
    event Slashed(address indexed provider, uint256 amount, bytes32 indexed evidenceHash, address verifier);

    // ----------------------------------------------------------------------------------------
    // Buyers
    // ----------------------------------------------------------------------------------------

    /// @notice Moves `amount` payment tokens from the caller into the caller's escrow.
    function deposit(uint256 amount) external;

    /// @notice Moves `amount` payment tokens from the caller into `buyer`'s escrow.
    function depositFor(address buyer, uint256 amount) external;

    /// @notice Starts a withdrawal of `amount`; it stays debitable until the delay passes.
    ///         Allowed while paused, but the delay then runs to a full delay after the unpause.
    function requestWithdrawal(uint256 amount) external;

    /// @notice Completes the caller's pending withdrawal (what is left of it after settlement);
    ///         not while paused, since settlement of usage in flight is paused too, and not
    ///         until a full withdrawal delay after the last unpause, so those epochs can settle
    ///         first (`ExitNotReady`).
    function withdraw() external;

    // ----------------------------------------------------------------------------------------
    // Providers
    // ----------------------------------------------------------------------------------------

    /// @notice Binds the caller's address to `ed25519Key`, the key that signs its receipts.
    function registerProvider(bytes32 ed25519Key) external;

    /// @notice Replaces the caller's bound Ed25519 key with `newKey` (a key that leaked, or a
    ///         routine rotation); allowed while paused, since no money moves.
    function rotateProviderKey(bytes32 newKey) external;

    /// @notice Stakes `amount` network tokens for the caller.
    function stake(uint256 amount) external;

    /// @notice Starts an unstake of `amount`; it stays slashable until the delay passes.
    ///         Allowed while paused, but the delay then runs to a full delay after the unpause.
    function requestUnstake(uint256 amount) external;

    /// @notice Completes the caller's pending unstake (what is left of it after slashing); not
    ///         while paused, and not until a full unstake delay after the last unpause, so the
    ///         work the pause held up can still be judged and slashed (`ExitNotReady`).
    function completeUnstake() external;

    /// @notice Pays the caller its settled earnings.
    function withdrawEarnings() external;

    // ----------------------------------------------------------------------------------------
    // Operator and verifier
    // ----------------------------------------------------------------------------------------

    /// @notice Settles the next epoch whole, or reverts whole. A reward to a registered provider
    ///         that is not active when the batch is mined is forfeited (`RewardForfeited`),
    ///         not a revert, so that no provider can hold the epoch up by leaving.
    function settleEpoch(EpochBatch calldata batch) external;

    /// @notice Burns `amount` of `provider`'s stake for the evidence `evidenceHash`.
    function slash(address provider, uint256 amount, bytes32 evidenceHash) external;

    /// @notice Sends the accrued protocol fees to `to`.
    function withdrawFees(address to) external;

    // ----------------------------------------------------------------------------------------
    // Views
    // ----------------------------------------------------------------------------------------

    /// @notice Whether `receiptHash` is in the receipts tree settled in `epoch`.
    function verifyReceipt(uint64 epoch, bytes32 receiptHash, bytes32[] calldata proof) external view returns (bool);

    /// @notice Whether `provider` is registered with at least the minimum stake not leaving.
    function isActiveProvider(address provider) external view returns (bool);

    /// @notice Each of `buyers`' escrow and pending withdrawal, in the order given: what an
    /// epoch may debit, read in one call for every buyer of the epoch. A withdrawal's
    /// `availableAt` here is the earliest it can be taken: its own time, a full delay after the
    /// last unpause, and while paused a full delay from now, whichever is latest.
    function escrowsOf(address[] calldata buyers)
        external
        view
        returns (uint256[] memory escrows, PendingExit[] memory withdrawals);
}
