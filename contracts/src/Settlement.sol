// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {INetworkToken} from "./interfaces/INetworkToken.sol";
import {ISettlement} from "./interfaces/ISettlement.sol";

/// @title Settlement of an energy-metered inference market
/// @notice See {ISettlement}. Every function checks, then changes state, then emits, then calls
///         out (checks-effects-interactions); the tokens it calls are the deployment's own.
///         Pausing stops deposits, registration, staking, settlement, buyers' withdrawals and
///         providers' unstakes (usage in flight must settle before escrow leaves, and stake stays
///         slashable until then); providers' earnings stay open, and slashing keeps working.
///         After an unpause an exit waits a full delay again, so a pause cannot use up the time
///         the delay leaves to settle or slash.
contract Settlement is ISettlement, AccessControl, Pausable, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice Settles epochs.
    bytes32 public constant OPERATOR_ROLE = keccak256("OPERATOR_ROLE");
    /// @notice Slashes stake with evidence.
    bytes32 public constant VERIFIER_ROLE = keccak256("VERIFIER_ROLE");
    /// @notice Pauses and unpauses.
    bytes32 public constant PAUSER_ROLE = keccak256("PAUSER_ROLE");

    uint16 private constant _BPS = 10_000;
    /// @dev The longest delay or reward interval a deployment may set: a longer one would lock
    ///      exits for good, and one near uint64's end would overflow when it is added.
    uint64 private constant _MAX_DELAY = 365 days;

    /// @notice Deployment parameters.
    struct Config {
        uint64 withdrawalDelay;
        uint64 unstakeDelay;
        uint256 minProviderStake;
        uint16 maxFeeBps;
        uint64 minRewardInterval;
    }

    IERC20 public immutable paymentToken;
    INetworkToken public immutable networkToken;
    uint64 public immutable withdrawalDelay;
    uint64 public immutable unstakeDelay;
    uint256 public immutable minProviderStake;
    uint16 public immutable maxFeeBps;
    /// @notice Rewards are minted at most once per this many seconds, so the per-epoch cap is
    ///         also a cap per unit of time however often epochs settle.
    uint64 public immutable minRewardInterval;

    /// @notice When the contract was last unpaused (0: never). A pending withdrawal or unstake
    ///         can be taken only a full `withdrawalDelay` or `unstakeDelay` after this, however
    ///         early its own `availableAt`.
    /// @dev Declared first so it shares a storage slot with Pausable's flag: `withdraw` and
    ///      `completeUnstake` read that slot for `whenNotPaused` anyway, and `unpause` writes both.
    uint64 public lastUnpausedAt;

    /// @notice Payment tokens each buyer holds in escrow.
    mapping(address buyer => uint256 amount) public escrow;
    /// @notice Each buyer's pending withdrawal.
    mapping(address buyer => PendingExit exit) public pendingWithdrawal;
    /// @notice Each provider's Ed25519 receipt-signing key (zero: not registered).
    mapping(address provider => bytes32 key) public providerKey;
    /// @notice Network tokens each provider has staked (pending unstakes included).
    mapping(address provider => uint256 amount) public stakeOf;
    /// @notice Each provider's pending unstake.
    mapping(address provider => PendingExit exit) public pendingUnstake;

    /// @dev Each provider's unpaid earnings and whether its key is registered, in one slot: a
    /// credit then reads and writes one slot, and a provider that withdrew everything keeps a
    /// non-zero slot, so its next credit rewrites it instead of creating it. `earnings(provider)`
    /// reads it.
    struct ProviderAccount {
        uint128 earnings;
        bool registered;
    }

    mapping(address provider => ProviderAccount account) private _providers;
    /// @notice The receipts Merkle root of each settled epoch.
    mapping(uint64 epoch => bytes32 root) public epochRoot;
    /// @notice Evidence hashes already used for slashing.
    mapping(bytes32 evidenceHash => bool used) public evidenceUsed;

    /// @notice The last settled epoch (0: none yet; the first epoch is 1).
    uint64 public lastSettledEpoch;
    /// @notice When rewards were last minted (0: never).
    uint64 public lastRewardedAt;
    /// @notice Sum of all stake.
    uint256 public totalStaked;

    /// @dev The running totals every settlement updates, two to a storage slot, so that an
    /// epoch pays for three slots instead of six; read through the getters below.
    struct Held {
        uint128 escrow; // sum of all escrow
        uint128 earnings; // sum of all unpaid earnings
    }

    struct Settled {
        uint128 debited; // everything ever debited from escrow by settlement
        uint128 credited; // everything ever credited to providers by settlement
    }

    struct Fees {
        uint128 accrued; // taken by settlement and not yet withdrawn
        uint128 total; // every fee ever taken by settlement
    }

    Held private _held;
    Settled private _settled;
    Fees private _fees;

    /// @param admin holds the admin, operator, verifier and pauser roles at first
    /// @param paymentToken_ the ERC-20 buyers pay in
    /// @param networkToken_ the ERC-20 providers stake and are rewarded in
    /// @param config delays, minimum stake and fee limit
    constructor(address admin, IERC20 paymentToken_, INetworkToken networkToken_, Config memory config) {
        if (admin == address(0) || address(paymentToken_) == address(0) || address(networkToken_) == address(0)) {
            revert ZeroAddress();
        }
        if (config.maxFeeBps > _BPS) revert InvalidConfig("maxFeeBps");
        // a zero delay would let escrow or stake leave in the block it is asked for, before
        // the work it owes settles or is slashed
        if (config.withdrawalDelay == 0 || config.withdrawalDelay > _MAX_DELAY) {
            revert InvalidConfig("withdrawalDelay");
        }
        if (config.unstakeDelay == 0 || config.unstakeDelay > _MAX_DELAY) revert InvalidConfig("unstakeDelay");
        if (config.minRewardInterval > _MAX_DELAY) revert InvalidConfig("minRewardInterval");
        paymentToken = paymentToken_;
        networkToken = networkToken_;
        withdrawalDelay = config.withdrawalDelay;
        unstakeDelay = config.unstakeDelay;
        minProviderStake = config.minProviderStake;
        maxFeeBps = config.maxFeeBps;
        minRewardInterval = config.minRewardInterval;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(OPERATOR_ROLE, admin);
        _grantRole(VERIFIER_ROLE, admin);
        _grantRole(PAUSER_ROLE, admin);
    }

    // ----------------------------------------------------------------------------------------
    // Buyers
    // ----------------------------------------------------------------------------------------

    /// @inheritdoc ISettlement
    function deposit(uint256 amount) external {
        depositFor(msg.sender, amount);
    }

    /// @inheritdoc ISettlement
    function depositFor(address buyer, uint256 amount) public whenNotPaused nonReentrant {
        if (buyer == address(0)) revert ZeroAddress();
        if (amount == 0) revert ZeroAmount();
        uint256 balance = escrow[buyer] + amount;
        escrow[buyer] = balance;
        _held.escrow = _toUint128(_held.escrow + amount);
        emit Deposited(buyer, msg.sender, amount, balance);
        paymentToken.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @inheritdoc ISettlement
    function requestWithdrawal(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        uint256 available = escrow[msg.sender];
        if (amount > available) revert InsufficientEscrow(msg.sender, available, amount);
        uint64 availableAt = uint64(block.timestamp) + withdrawalDelay;
        pendingWithdrawal[msg.sender] = PendingExit(_toUint192(amount), availableAt);
        emit WithdrawalRequested(msg.sender, amount, availableAt);
    }

    /// @inheritdoc ISettlement
    function withdraw() external whenNotPaused nonReentrant {
        uint256 amount = _takeReadyExit(pendingWithdrawal, escrow[msg.sender], withdrawalDelay);
        escrow[msg.sender] -= amount;
        _held.escrow -= _toUint128(amount);
        emit Withdrawn(msg.sender, amount);
        paymentToken.safeTransfer(msg.sender, amount);
    }

    // ----------------------------------------------------------------------------------------
    // Providers
    // ----------------------------------------------------------------------------------------

    /// @inheritdoc ISettlement
    function registerProvider(bytes32 ed25519Key) external whenNotPaused {
        if (ed25519Key == bytes32(0)) revert ZeroKey();
        if (providerKey[msg.sender] != bytes32(0)) revert ProviderAlreadyRegistered(msg.sender);
        providerKey[msg.sender] = ed25519Key;
        _providers[msg.sender].registered = true;
        emit ProviderRegistered(msg.sender, ed25519Key);
    }

    /// @inheritdoc ISettlement
    function rotateProviderKey(bytes32 newKey) external {
        bytes32 oldKey = providerKey[msg.sender];
        if (oldKey == bytes32(0)) revert UnknownProvider(msg.sender);
        if (newKey == bytes32(0)) revert ZeroKey();
        if (newKey == oldKey) revert SameKey(newKey);
        providerKey[msg.sender] = newKey;
        emit ProviderKeyRotated(msg.sender, oldKey, newKey);
    }

    /// @inheritdoc ISettlement
    function stake(uint256 amount) external whenNotPaused nonReentrant {
        if (amount == 0) revert ZeroAmount();
        if (providerKey[msg.sender] == bytes32(0)) revert UnknownProvider(msg.sender);
        uint256 staked = stakeOf[msg.sender] + amount;
        stakeOf[msg.sender] = staked;
        totalStaked += amount;
        emit Staked(msg.sender, amount, staked);
        IERC20(address(networkToken)).safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @inheritdoc ISettlement
    function requestUnstake(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        uint256 staked = stakeOf[msg.sender];
        if (amount > staked) revert InsufficientStake(msg.sender, staked, amount);
        uint64 availableAt = uint64(block.timestamp) + unstakeDelay;
        pendingUnstake[msg.sender] = PendingExit(_toUint192(amount), availableAt);
        emit UnstakeRequested(msg.sender, amount, availableAt);
    }

    /// @inheritdoc ISettlement
    function completeUnstake() external whenNotPaused nonReentrant {
        uint256 amount = _takeReadyExit(pendingUnstake, stakeOf[msg.sender], unstakeDelay);
        stakeOf[msg.sender] -= amount;
        totalStaked -= amount;
        emit Unstaked(msg.sender, amount);
        IERC20(address(networkToken)).safeTransfer(msg.sender, amount);
    }

    /// @inheritdoc ISettlement
    function withdrawEarnings() external nonReentrant {
        ProviderAccount storage account = _providers[msg.sender];
        uint128 amount = account.earnings;
        if (amount == 0) revert NothingToWithdraw(msg.sender);
        account.earnings = 0;
        _held.earnings -= amount;
        emit EarningsWithdrawn(msg.sender, amount);
        paymentToken.safeTransfer(msg.sender, amount);
    }

    // ----------------------------------------------------------------------------------------
    // Operator and verifier
    // ----------------------------------------------------------------------------------------

    /// @inheritdoc ISettlement
    function settleEpoch(EpochBatch calldata batch) external onlyRole(OPERATOR_ROLE) whenNotPaused nonReentrant {
        uint64 expected = lastSettledEpoch + 1;
        if (batch.epoch < expected) revert EpochAlreadySettled(batch.epoch);
        if (batch.epoch > expected) revert EpochOutOfOrder(expected, batch.epoch);

        uint256 debited = _applyDebits(batch.debits);
        uint256 credited = _applyCredits(batch.credits);
        if (debited != credited + batch.fee) {
            revert UnbalancedBatch(debited, credited, batch.fee);
        }
        uint256 feeLimit = debited * maxFeeBps / _BPS;
        if (batch.fee > feeLimit) revert FeeExceedsLimit(batch.fee, feeLimit);
        uint256 rewarded = _sumRewards(batch.rewards);

        lastSettledEpoch = batch.epoch;
        if (rewarded > 0) lastRewardedAt = uint64(block.timestamp);
        epochRoot[batch.epoch] = batch.receiptsRoot;
        _addSettled(_toUint128(debited), _toUint128(credited), _toUint128(batch.fee));
        emit EpochSettled(batch.epoch, batch.receiptsRoot, batch.receiptCount, debited, batch.fee, rewarded);

        for (uint256 i; i < batch.rewards.length; ++i) {
            Credit calldata reward = batch.rewards[i];
            if (_isActive(reward.provider)) {
                networkToken.mintReward(reward.provider, reward.amount, batch.epoch);
            } else {
                emit RewardForfeited(batch.epoch, reward.provider, reward.amount);
            }
        }
    }

    /// @inheritdoc ISettlement
    function slash(address provider, uint256 amount, bytes32 evidenceHash)
        external
        onlyRole(VERIFIER_ROLE)
        nonReentrant
    {
        if (amount == 0) revert ZeroAmount();
        if (evidenceUsed[evidenceHash]) revert EvidenceAlreadyUsed(evidenceHash);
        uint256 staked = stakeOf[provider];
        if (amount > staked) revert InsufficientStake(provider, staked, amount);
        evidenceUsed[evidenceHash] = true;
        stakeOf[provider] = staked - amount;
        totalStaked -= amount;
        emit Slashed(provider, amount, evidenceHash, msg.sender);
        networkToken.burn(amount);
    }

    /// @inheritdoc ISettlement
    function withdrawFees(address to) external onlyRole(DEFAULT_ADMIN_ROLE) nonReentrant {
        if (to == address(0)) revert ZeroAddress();
        uint256 amount = _fees.accrued;
        if (amount == 0) revert NothingToWithdraw(to);
        _fees.accrued = 0;
        emit FeesWithdrawn(to, amount);
        paymentToken.safeTransfer(to, amount);
    }

    /// @notice Stops deposits, registration, staking, settlement, withdrawals and unstakes.
    function pause() external onlyRole(PAUSER_ROLE) {
        _pause();
    }

    /// @notice Resumes what `pause` stopped. Pending withdrawals and unstakes then wait a full
    ///         delay from now (see `lastUnpausedAt`), so the epochs the pause held up can settle,
    ///         and stake be slashed, before any exit is taken.
    function unpause() external onlyRole(PAUSER_ROLE) whenPaused {
        lastUnpausedAt = uint64(block.timestamp);
        _unpause();
    }

    // ----------------------------------------------------------------------------------------
    // Views
    // ----------------------------------------------------------------------------------------

    /// @inheritdoc ISettlement
    function verifyReceipt(uint64 epoch, bytes32 receiptHash, bytes32[] calldata proof) external view returns (bool) {
        bytes32 root = epochRoot[epoch];
        if (root == bytes32(0)) return false;
        return MerkleProof.verifyCalldata(proof, root, keccak256(abi.encode(receiptHash)));
    }

    /// @notice Settled payment tokens `provider` may withdraw.
    function earnings(address provider) external view returns (uint256 amount) {
        return _providers[provider].earnings;
    }

    /// @notice Sum of all escrow.
    function totalEscrow() external view returns (uint256) {
        return _held.escrow;
    }

    /// @notice Sum of all unpaid earnings.
    function totalEarnings() external view returns (uint256) {
        return _held.earnings;
    }

    /// @notice Protocol fees accrued and not yet withdrawn.
    function accruedFees() external view returns (uint256) {
        return _fees.accrued;
    }

    /// @notice Everything ever debited from escrow by settlement.
    function totalDebited() external view returns (uint256) {
        return _settled.debited;
    }

    /// @notice Everything ever credited to providers by settlement.
    function totalCredited() external view returns (uint256) {
        return _settled.credited;
    }

    /// @notice Every fee ever taken by settlement.
    function totalFees() external view returns (uint256) {
        return _fees.total;
    }

    /// @inheritdoc ISettlement
    function isActiveProvider(address provider) external view returns (bool) {
        return providerKey[provider] != bytes32(0) && _isActive(provider);
    }

    /// @inheritdoc ISettlement
    function escrowsOf(address[] calldata buyers)
        external
        view
        returns (uint256[] memory escrows, PendingExit[] memory withdrawals)
    {
        escrows = new uint256[](buyers.length);
        withdrawals = new PendingExit[](buyers.length);
        uint64 notBefore = _exitsNotBefore(withdrawalDelay);
        if (paused()) notBefore = _max(notBefore, uint64(block.timestamp) + withdrawalDelay);
        for (uint256 i; i < buyers.length; ++i) {
            escrows[i] = escrow[buyers[i]];
            PendingExit memory exit = pendingWithdrawal[buyers[i]];
            if (exit.availableAt != 0) exit.availableAt = _max(exit.availableAt, notBefore);
            withdrawals[i] = exit;
        }
    }

    // ----------------------------------------------------------------------------------------
    // Internals
    // ----------------------------------------------------------------------------------------

    function _applyDebits(Debit[] calldata debits) private returns (uint256 total) {
        for (uint256 i; i < debits.length; ++i) {
            Debit calldata debit = debits[i];
            uint256 available = escrow[debit.buyer];
            if (debit.amount > available) {
                revert InsufficientEscrow(debit.buyer, available, debit.amount);
            }
            unchecked {
                escrow[debit.buyer] = available - debit.amount;
            }
            total += debit.amount;
        }
    }

    function _applyCredits(Credit[] calldata credits) private returns (uint256 total) {
        for (uint256 i; i < credits.length; ++i) {
            Credit calldata credit = credits[i];
            ProviderAccount storage account = _providers[credit.provider];
            if (!account.registered) revert UnknownProvider(credit.provider);
            account.earnings = _toUint128(account.earnings + credit.amount);
            total += credit.amount;
        }
    }

    /// @dev The rewards that will be minted: those to providers active now. A provider can
    ///      leave (`requestUnstake`) between the operator's decision and the mined batch; its
    ///      reward is then forfeited rather than the epoch refused, or any rewarded provider
    ///      could hold every epoch up, and every payment with it.
    function _sumRewards(Credit[] calldata rewards) private view returns (uint256 total) {
        if (rewards.length == 0) return 0;
        uint64 availableAt = lastRewardedAt + minRewardInterval;
        if (lastRewardedAt != 0 && block.timestamp < availableAt) revert RewardsTooSoon(availableAt);
        for (uint256 i; i < rewards.length; ++i) {
            address provider = rewards[i].provider;
            if (!_providers[provider].registered) revert UnknownProvider(provider);
            if (_isActive(provider)) total += rewards[i].amount;
        }
        uint256 cap = networkToken.epochMintCap();
        if (total > cap) revert RewardCapExceeded(total, cap);
    }

    /// @dev Clears the caller's ready pending exit and returns what is left of it within `held`.
    ///      An exit is ready once its own `availableAt` and a full `delay` since the last
    ///      unpause have both passed.
    function _takeReadyExit(mapping(address => PendingExit) storage exits, uint256 held, uint64 delay)
        private
        returns (uint256 amount)
    {
        PendingExit memory exit = exits[msg.sender];
        if (exit.availableAt == 0) revert NoPendingExit(msg.sender);
        uint64 readyAt = _max(exit.availableAt, _exitsNotBefore(delay));
        if (block.timestamp < readyAt) revert ExitNotReady(msg.sender, readyAt);
        amount = _pendingWithin(exit, held);
        if (amount == 0) revert NothingToWithdraw(msg.sender);
        delete exits[msg.sender];
    }

    /// @dev The earliest time any exit with this `delay` can be taken: a full delay after the
    ///      last unpause (just `delay` if never unpaused, which every real clock has passed).
    function _exitsNotBefore(uint64 delay) private view returns (uint64) {
        return lastUnpausedAt + delay;
    }

    function _max(uint64 a, uint64 b) private pure returns (uint64) {
        return a > b ? a : b;
    }

    /// @dev Stake not leaving covers the minimum (registration is checked by the caller).
    function _isActive(address provider) private view returns (bool) {
        uint256 staked = stakeOf[provider];
        return staked - _pendingWithin(pendingUnstake[provider], staked) >= minProviderStake;
    }

    function _toUint192(uint256 amount) private pure returns (uint192) {
        if (amount > type(uint192).max) revert AmountTooLarge(amount);
        // forge-lint: disable-next-line(unsafe-typecast)
        return uint192(amount);
    }

    /// @dev Moves an epoch's debits from escrow to earnings and fees in the running totals.
    function _addSettled(uint128 debited, uint128 credited, uint128 fee) private {
        Held memory held = _held;
        _held = Held(held.escrow - debited, held.earnings + credited);
        Settled memory settled = _settled;
        _settled = Settled(settled.debited + debited, settled.credited + credited);
        Fees memory fees = _fees;
        _fees = Fees(fees.accrued + fee, fees.total + fee);
    }

    function _toUint128(uint256 amount) private pure returns (uint128) {
        if (amount > type(uint128).max) revert AmountTooLarge(amount);
        // forge-lint: disable-next-line(unsafe-typecast)
        return uint128(amount);
    }

    function _pendingWithin(PendingExit memory exit, uint256 held) private pure returns (uint256) {
        return exit.amount < held ? exit.amount : held;
    }
}
