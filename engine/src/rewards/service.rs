//! The rewards service: charges completions, runs the reward policy, keeps the books.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use super::book::{self, AccountTotals, FeeRecord, FeeStatus, Payment, Payout};
use super::flags::{Flag, FlagRequest};
use super::money::{units, Fee};
use super::terms::ModelTerms;
use super::RewardsError;
use crate::attribution::record::AttributionRecord;
use crate::attribution::service::Attributions;
use crate::datanet::service::DatanetError;
use crate::datanet::service::Datanets;
use crate::identity::Address;
use crate::plugin::reward::{self, Distribution, Entry, Penalty};
use crate::plugin::state::StateChanges;
use crate::plugin::{PluginKind, Plugins};
use crate::store::{Store, CF_REWARDS};

/// What a completion is charged for.
#[derive(Debug, Clone)]
pub struct Charge {
    pub completion: String,
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The answer's attribution records, one per part that has one (base, adapter).
    pub attributions: Vec<String>,
}

/// The rewards book held: balances are read and written, and epochs close, under it. Code
/// that also files attributions takes it first.
pub struct BookLock<'a> {
    _held: MutexGuard<'a, ()>,
}

/// A charge ready to write: what [`Rewards::prepare_charge`] found.
#[derive(Debug)]
pub enum PreparedCharge {
    /// The model has no terms: nothing to record.
    Free,
    /// The completion was charged before; its record stands.
    Charged(FeeRecord),
    New {
        record: FeeRecord,
        /// The policy plugin's state changes, committed with the fee.
        state: StateChanges,
    },
}

/// An account as `GET /v1/accounts/{address}/rewards` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AccountRewards {
    pub address: String,
    /// Earned in closed epochs and not claimed: what claim proofs cover.
    #[serde(with = "units")]
    #[schema(value_type = String)]
    pub balance: u128,
    /// Earned in the open epoch: claimable once it closes.
    #[serde(with = "units")]
    #[schema(value_type = String)]
    pub pending: u128,
    #[serde(with = "units")]
    #[schema(value_type = String)]
    pub claimed: u128,
    #[serde(with = "units")]
    #[schema(value_type = String)]
    pub earned: u128,
    /// The open epoch.
    pub epoch: u64,
    /// The completions that paid the account, newest epoch first, at most `limit`.
    pub payments: Vec<Payment>,
}

/// A reward policy compiled into the host, registered under an id as a plugin would be:
/// its answer is checked exactly as a plugin's is. The benchmark runs the `proportional`
/// plugin's own code this way beside its component.
pub trait NativePolicy: Send + Sync {
    fn distribute(
        &self,
        request: &Distribution,
        config: &str,
    ) -> Result<Vec<(String, u128)>, String>;
}

pub struct Rewards {
    natives: std::collections::HashMap<String, Arc<dyn NativePolicy>>,
    store: Arc<Store>,
    attributions: Arc<Attributions>,
    datanets: Arc<Datanets>,
    plugins: Option<Arc<Plugins>>,
    /// Held while balances are read and written, and while an epoch closes, so that two
    /// completions never update a balance from the same old value and no fee lands in an
    /// epoch that has closed.
    book: Mutex<()>,
    /// Held through a settlement attempt, so that the retry task and a request never settle
    /// the same epoch at once, and through an ask of a ledger for claims.
    settling: Mutex<()>,
    /// Settled epochs whose ledger answered that it keeps no record of claims: the
    /// background task stops asking them (until a restart).
    claims_untracked: Mutex<std::collections::BTreeSet<u64>>,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn io(e: impl std::fmt::Display) -> RewardsError {
    RewardsError::Io(e.to_string())
}

impl Rewards {
    pub fn new(
        store: Arc<Store>,
        attributions: Arc<Attributions>,
        datanets: Arc<Datanets>,
        plugins: Option<Arc<Plugins>>,
    ) -> Self {
        Self {
            natives: Default::default(),
            store,
            attributions,
            datanets,
            plugins,
            book: Mutex::new(()),
            settling: Mutex::new(()),
            claims_untracked: Mutex::new(Default::default()),
        }
    }

    /// Registers a native policy under `id`; terms naming `id` use it instead of a plugin.
    pub fn with_native(mut self, id: &str, policy: Arc<dyn NativePolicy>) -> Self {
        self.natives.insert(id.to_string(), policy);
        self
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn attributions(&self) -> &Arc<Attributions> {
        &self.attributions
    }

    pub fn plugins(&self) -> Option<&Arc<Plugins>> {
        self.plugins.as_ref()
    }

    pub(crate) fn lock_book(&self) -> BookLock<'_> {
        BookLock {
            _held: self.book.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    pub(crate) fn claims_untracked(&self, epoch: u64) {
        self.claims_untracked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(epoch);
    }

    pub(crate) fn is_claims_untracked(&self, epoch: u64) -> bool {
        self.claims_untracked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&epoch)
    }

    pub(crate) fn lock_settling(&self) -> std::sync::MutexGuard<'_, ()> {
        self.settling.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- terms ----

    /// Sets a model's terms; the policy must be an installed reward policy and its config
    /// must fit the policy's schema. Later completions use them; earlier fees stand.
    pub fn set_terms(&self, model: &str, terms: ModelTerms) -> Result<ModelTerms, RewardsError> {
        if model.is_empty() || model.len() > 200 {
            return Err(RewardsError::invalid(
                "model",
                "must be 1 to 200 characters",
            ));
        }
        terms.check()?;
        if self.natives.contains_key(&terms.policy) {
            let mut batch = self.store.batch();
            batch.put_json(CF_REWARDS, book::terms_key(model), &terms)?;
            batch.commit()?;
            return Ok(terms);
        }
        let plugins = self
            .plugins
            .as_ref()
            .ok_or_else(|| RewardsError::invalid("policy", "this server runs without plugins"))?;
        plugins
            .get_kind(&terms.policy, PluginKind::RewardPolicy)
            .map_err(|e| RewardsError::invalid("policy", e.to_string()))?;
        plugins
            .check_config(&terms.policy, &terms.policy_config)
            .map_err(|e| RewardsError::invalid("policy_config", e.to_string()))?;
        let mut batch = self.store.batch();
        batch.put_json(CF_REWARDS, book::terms_key(model), &terms)?;
        batch.commit()?;
        Ok(terms)
    }

    pub fn terms(&self, model: &str) -> Result<Option<ModelTerms>, RewardsError> {
        Ok(self
            .store
            .get_json(CF_REWARDS, book::terms_key(model).as_bytes())?)
    }

    // ---- charging ----

    /// The fee record of a completion, once charged.
    pub fn fee(&self, completion: &str) -> Result<Option<FeeRecord>, RewardsError> {
        Ok(self
            .store
            .get_json(CF_REWARDS, book::fee_key(completion).as_bytes())?)
    }

    /// Charges a completion once: its fee, split by the model's terms and policy, committed
    /// with every balance change in one batch. Charging it again returns the first record.
    /// A model without terms is free: nothing is recorded and `None` comes back. The
    /// completion's attribution records must be filed already; a completion charged as its
    /// records are filed goes through [`Self::prepare_charge`] and [`Self::write_charge`].
    pub fn charge(&self, charge: &Charge) -> Result<Option<FeeRecord>, RewardsError> {
        let records: Vec<AttributionRecord> = charge
            .attributions
            .iter()
            .map(|id| self.attributions.get(id).map(|s| s.attribution))
            .collect::<Result<_, _>>()
            .map_err(io)?;
        let prepared = self.prepare_charge(charge, &records)?;
        let book = self.lock_book();
        let mut batch = self.store.batch();
        let fee = self.write_charge(&book, prepared, &charge.attributions, &mut batch)?;
        batch.commit()?;
        Ok(fee)
    }

    /// Everything of a charge that can be done before the books are locked: the fee, and
    /// the policy's split of its pool over `records` (the completion's attribution records,
    /// filed or about to be).
    pub fn prepare_charge(
        &self,
        charge: &Charge,
        records: &[AttributionRecord],
    ) -> Result<PreparedCharge, RewardsError> {
        if let Some(done) = self.fee(&charge.completion)? {
            return Ok(PreparedCharge::Charged(done));
        }
        let Some(terms) = self.terms(&charge.model)? else {
            return Ok(PreparedCharge::Free);
        };
        let fee = Fee::of(
            &terms.price,
            &terms.split,
            charge.input_tokens,
            charge.output_tokens,
        )?;
        let mut state = StateChanges::default();
        // The policy runs outside the book's lock: a slow plugin holds up nobody else.
        let split = self.split_pool(records, &terms, fee.pool, &mut state)?;
        let mut record = FeeRecord {
            completion: charge.completion.clone(),
            model: charge.model.clone(),
            epoch: 0,
            input_tokens: charge.input_tokens,
            output_tokens: charge.output_tokens,
            fee,
            status: FeeStatus::Paid,
            reason: None,
            policy: terms.policy.clone(),
            attributions: charge.attributions.clone(),
            payouts: Vec::new(),
            at: now(),
        };
        match split {
            Ok(contributors) => {
                let mut payouts = vec![
                    payout(&terms.platform, fee.platform, "platform"),
                    payout(&terms.owner, fee.owner, "owner"),
                ];
                payouts.extend(contributors);
                payouts.retain(|p| p.amount > 0);
                record.payouts = payouts;
            }
            Err(reason) => {
                record.status = FeeStatus::Escrow;
                record.reason = Some(reason);
                state = StateChanges::default();
            }
        }
        record.check().map_err(RewardsError::Conservation)?;
        Ok(PreparedCharge::New { record, state })
    }

    /// The pool's payouts, or why the fee goes to escrow. `Err` of the outer result is an
    /// engine failure (storage), which charges nothing and may be retried.
    fn split_pool(
        &self,
        records: &[AttributionRecord],
        terms: &ModelTerms,
        pool: u128,
        state: &mut StateChanges,
    ) -> Result<Result<Vec<Payout>, String>, RewardsError> {
        let fallback = terms.fallback().to_checksum();
        if pool == 0 {
            return Ok(Ok(Vec::new()));
        }
        let entries = self.entries(records)?;
        if entries.is_empty() {
            // Nobody's data is known to have shaped the answer.
            return Ok(Ok(vec![Payout {
                account: fallback,
                amount: pool,
                role: "fallback".into(),
            }]));
        }
        let contributors: Vec<&str> = entries.iter().map(|e| e.contributor.as_str()).collect();
        let request = Distribution {
            pool,
            fallback: fallback.clone(),
            attribution_id: records
                .iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>()
                .join(","),
            penalties: self.penalties(&contributors)?,
            entries,
        };
        let mut datanets: Vec<String> = request.entries.iter().map(|e| e.datanet.clone()).collect();
        datanets.sort();
        datanets.dedup();
        let infos: Vec<_> = datanets
            .iter()
            .filter_map(|d| self.datanets.get(d).ok())
            .map(|d| crate::plugin::validator::datanet_info(&d))
            .collect();
        let config = terms.policy_config.to_string();
        let payouts = if let Some(native) = self.natives.get(&terms.policy) {
            let checked = native
                .distribute(&request, &config)
                .and_then(|p| reward::check_payouts(&request, &p).map(|_| p));
            match checked {
                Ok(p) => p,
                Err(e) => return Ok(Err(format!("reward policy {}: {e}", terms.policy))),
            }
        } else {
            let Some(plugins) = &self.plugins else {
                return Ok(Err(
                    "this server runs without plugins, so no reward policy".into()
                ));
            };
            let plugin = match plugins.get_kind(&terms.policy, PluginKind::RewardPolicy) {
                Ok(p) => p,
                Err(e) => return Ok(Err(format!("reward policy: {e}"))),
            };
            match reward::distribute(&plugin, &request, &infos, &config, state) {
                Ok(p) => p,
                Err(e) => return Ok(Err(e.to_string())),
            }
        };
        // Merge by account, role by whether it is the fallback.
        let mut merged: BTreeMap<String, (String, u128)> = BTreeMap::new();
        for (account, amount) in payouts {
            let checksum = account
                .parse::<Address>()
                .map(|a| a.to_checksum())
                .unwrap_or(account);
            let slot = merged
                .entry(checksum.to_ascii_lowercase())
                .or_insert((checksum, 0));
            slot.1 += amount;
        }
        Ok(Ok(merged
            .into_values()
            .map(|(account, amount)| Payout {
                role: if account.eq_ignore_ascii_case(&fallback) {
                    "fallback".into()
                } else {
                    "contributor".into()
                },
                account,
                amount,
            })
            .collect()))
    }

    /// The policy's entries: every scored record of each attribution, each part weighted
    /// equally (each record's share of its part over the number of parts), with the
    /// record's quality.
    fn entries(&self, records: &[AttributionRecord]) -> Result<Vec<Entry>, RewardsError> {
        let parts = records.iter().filter(|r| !r.records.is_empty()).count() as f64;
        let mut entries = Vec::new();
        for record in records {
            let datanet = record.datanet.clone().unwrap_or_default();
            let ids: Vec<&str> = record
                .records
                .iter()
                .map(|r| r.record_id.as_str())
                .collect();
            let quality = if datanet.is_empty() {
                vec![1.0; ids.len()]
            } else {
                self.datanets.record_qualities(&datanet, &ids).map_err(io)?
            };
            let unit = record.score_unit.max(1) as f64;
            for (r, q) in record.records.iter().zip(quality) {
                entries.push(Entry {
                    record_id: r.record_id.clone(),
                    datanet: datanet.clone(),
                    contributor: r.contributor.clone(),
                    score: r.score as f64 / unit / parts,
                    quality: q,
                });
            }
        }
        Ok(entries)
    }

    /// Writes a prepared charge into `batch` (the fee record, every balance change, the
    /// account histories and the policy's state), under the book's lock, which `_book`
    /// proves is held until the batch commits. `attributions` are the ids of the records as
    /// filed. A completion charged in the meantime keeps its first record, which comes
    /// back, and nothing is written.
    pub fn write_charge(
        &self,
        _book: &BookLock<'_>,
        prepared: PreparedCharge,
        attributions: &[String],
        batch: &mut crate::store::Batch<'_>,
    ) -> Result<Option<FeeRecord>, RewardsError> {
        let (mut record, state) = match prepared {
            PreparedCharge::Free => return Ok(None),
            PreparedCharge::Charged(done) => return Ok(Some(done)),
            PreparedCharge::New { record, state } => (record, state),
        };
        if let Some(done) = self.fee(&record.completion)? {
            return Ok(Some(done));
        }
        record.attributions = attributions.to_vec();
        record.epoch = self.attributions.current_epoch().map_err(io)?;
        // One account may be paid under two roles (the owner is also the fallback): each
        // account's credits are summed first, so its balance is read and written once.
        let mut credits: BTreeMap<String, (String, u128, Vec<String>)> = BTreeMap::new();
        for p in &record.payouts {
            let c = credits
                .entry(p.account.to_ascii_lowercase())
                .or_insert_with(|| (p.account.clone(), 0, Vec::new()));
            c.1 = c
                .1
                .checked_add(p.amount)
                .ok_or_else(|| RewardsError::Conservation(format!("{} overflows", p.account)))?;
            c.2.push(p.role.clone());
        }
        for (account, amount, roles) in credits.into_values() {
            let mut totals: AccountTotals = self
                .store
                .get_json(CF_REWARDS, book::account_key(&account).as_bytes())?
                .unwrap_or_default();
            totals.earned = totals
                .earned
                .checked_add(amount)
                .ok_or_else(|| RewardsError::Conservation(format!("{account} overflows")))?;
            batch.put_json(CF_REWARDS, book::account_key(&account), &totals)?;
            let earn_key = book::earn_key(record.epoch, &account);
            let earned = self
                .store
                .get(CF_REWARDS, earn_key.as_bytes())?
                .and_then(|v| book::parse_units(&v))
                .unwrap_or(0)
                + amount;
            batch.put(CF_REWARDS, earn_key, earned.to_string());
            batch.put_json(
                CF_REWARDS,
                book::payment_key(&account, record.epoch, &record.completion),
                &Payment {
                    completion: record.completion.clone(),
                    model: record.model.clone(),
                    epoch: record.epoch,
                    amount,
                    role: roles.join("+"),
                    attributions: record.attributions.clone(),
                    at: record.at,
                },
            )?;
        }
        batch.put_json(CF_REWARDS, book::fee_key(&record.completion), &record)?;
        state.write_to(&self.store, batch)?;
        Ok(Some(record))
    }

    /// Fee records in completion-id order, optionally of one status, at most `limit`.
    pub fn fees(
        &self,
        status: Option<FeeStatus>,
        limit: usize,
    ) -> Result<Vec<FeeRecord>, RewardsError> {
        let mut out = Vec::new();
        self.store
            .scan(CF_REWARDS, b"fee/", b"fee/", |key, value| {
                let record: FeeRecord = crate::store::decode(CF_REWARDS, key, value)?;
                if status.is_none_or(|s| s == record.status) {
                    out.push(record);
                }
                Ok(out.len() < limit)
            })?;
        Ok(out)
    }

    // ---- penalties ----

    /// Flags a record of a Datanet; its contributor carries the penalty from now on.
    pub fn flag(
        &self,
        datanet: &str,
        record: &str,
        request: &FlagRequest,
        by: Option<String>,
    ) -> Result<Flag, RewardsError> {
        let weight = request.weight()?;
        let info = self.datanets.record(datanet, record).map_err(|e| match e {
            DatanetError::RecordNotFound { .. } | DatanetError::NotFound(_) => {
                RewardsError::NotFound(e.to_string())
            }
            DatanetError::InvalidField { message, .. } => {
                RewardsError::invalid("record_id", message)
            }
            other => RewardsError::Io(other.to_string()),
        })?;
        let flag = Flag {
            datanet: datanet.to_string(),
            record_id: info.record_id.clone(),
            contributor: info.contributor,
            kind: request.kind,
            reason: request.reason.trim().to_string(),
            weight,
            by,
            at: now(),
        };
        let contributor = info.contributor.to_checksum();
        let mut batch = self.store.batch();
        batch.put_json(
            CF_REWARDS,
            book::flag_key(&contributor, datanet, &info.record_id),
            &flag,
        )?;
        batch.commit()?;
        Ok(flag)
    }

    /// Every flag on a contributor's records.
    pub fn flags(&self, contributor: &str) -> Result<Vec<Flag>, RewardsError> {
        Ok(self
            .store
            .scan_prefix_json(CF_REWARDS, book::flag_prefix(contributor).as_bytes())?)
    }

    /// The penalties of these contributors: one per flagged contributor, the lowest weight
    /// of their flags, the reasons joined.
    fn penalties(&self, contributors: &[&str]) -> Result<Vec<Penalty>, RewardsError> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for c in contributors {
            if !seen.insert(c.to_ascii_lowercase()) {
                continue;
            }
            let flags = self.flags(c)?;
            if flags.is_empty() {
                continue;
            }
            out.push(Penalty {
                contributor: c.to_string(),
                weight: flags.iter().map(|f| f.weight).fold(1.0, f64::min),
                reason: flags
                    .iter()
                    .map(|f| format!("{}/{}: {}", f.datanet, f.record_id, f.reason))
                    .collect::<Vec<_>>()
                    .join("; "),
            });
        }
        Ok(out)
    }

    // ---- accounts ----

    pub fn account(&self, address: &str, limit: usize) -> Result<AccountRewards, RewardsError> {
        let parsed: Address = address
            .parse()
            .map_err(|e| RewardsError::invalid("address", format!("{e}")))?;
        let checksum = parsed.to_checksum();
        // Totals and the open epoch's earnings are read together, under the book: a charge
        // or claim booked between the two reads would make them disagree.
        let (epoch, totals, pending) = {
            let _book = self.lock_book();
            let epoch = self.attributions.current_epoch().map_err(io)?;
            let totals: AccountTotals = self
                .store
                .get_json(CF_REWARDS, book::account_key(&checksum).as_bytes())?
                .unwrap_or_default();
            let pending = self
                .store
                .get(CF_REWARDS, book::earn_key(epoch, &checksum).as_bytes())?
                .and_then(|v| book::parse_units(&v))
                .unwrap_or(0);
            (epoch, totals, pending)
        };
        let balance = totals
            .earned
            .checked_sub(pending)
            .and_then(|b| b.checked_sub(totals.claimed))
            .ok_or_else(|| {
                RewardsError::Conservation(format!(
                    "{checksum} earned {} but has {pending} pending and {} claimed",
                    totals.earned, totals.claimed
                ))
            })?;
        let mut payments: Vec<Payment> = self
            .store
            .scan_prefix_json(CF_REWARDS, book::payment_prefix(&checksum).as_bytes())?;
        payments.reverse();
        payments.truncate(limit);
        Ok(AccountRewards {
            address: checksum,
            balance,
            pending,
            claimed: totals.claimed,
            earned: totals.earned,
            epoch,
            payments,
        })
    }

    /// Sums over the whole book, for conservation checks: every fee charged, what was paid
    /// out of it, what sits in escrow, and every account's earnings.
    pub fn audit(&self) -> Result<Audit, RewardsError> {
        let mut audit = Audit::default();
        let fees: Vec<FeeRecord> = self.store.scan_prefix_json(CF_REWARDS, b"fee/")?;
        for f in &fees {
            f.check().map_err(RewardsError::Conservation)?;
            audit.completions += 1;
            audit.fees += f.fee.total;
            audit.pools += f.fee.pool;
            match f.status {
                FeeStatus::Paid => audit.paid += f.fee.total,
                FeeStatus::Escrow => audit.escrow += f.fee.total,
            }
        }
        let accounts: Vec<AccountTotals> = self.store.scan_prefix_json(CF_REWARDS, b"acct/")?;
        audit.balances = accounts.iter().map(|a| a.earned).sum();
        Ok(audit)
    }
}

/// Totals over the book.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Audit {
    pub completions: u64,
    pub fees: u128,
    pub pools: u128,
    pub paid: u128,
    pub escrow: u128,
    /// Everything ever credited to accounts: equals `paid`.
    pub balances: u128,
}

fn payout(account: &Address, amount: u128, role: &str) -> Payout {
    Payout {
        account: account.to_checksum(),
        amount,
        role: role.into(),
    }
}
