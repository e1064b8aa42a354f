//! Money: integer base units (u128) and the arithmetic of a fee, exact to the unit. Amounts
//! cross JSON as decimal strings, since JavaScript numbers lose integers past 2^53.

use serde::{Deserialize, Serialize};

use super::RewardsError;

/// Basis points in a whole.
pub const BPS: u128 = 10_000;

/// What a model charges, in base units per 1,000 tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Price {
    #[serde(with = "units")]
    #[schema(value_type = String, example = "2000000000000")]
    pub input_per_1k: u128,
    #[serde(with = "units")]
    #[schema(value_type = String, example = "6000000000000")]
    pub output_per_1k: u128,
}

/// Where a fee goes, in basis points of it: the platform's and the model owner's shares; the
/// rest is the contributor pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Split {
    pub platform_bps: u32,
    pub owner_bps: u32,
}

impl Default for Split {
    fn default() -> Self {
        Self {
            platform_bps: 1_000,
            owner_bps: 2_000,
        }
    }
}

/// One completion's fee and its three shares, which sum to it exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Fee {
    #[serde(with = "units")]
    #[schema(value_type = String)]
    pub total: u128,
    #[serde(with = "units")]
    #[schema(value_type = String)]
    pub platform: u128,
    #[serde(with = "units")]
    #[schema(value_type = String)]
    pub owner: u128,
    /// What the contributors share.
    #[serde(with = "units")]
    #[schema(value_type = String)]
    pub pool: u128,
}

impl Split {
    pub fn check(&self) -> Result<(), RewardsError> {
        if u128::from(self.platform_bps) + u128::from(self.owner_bps) > BPS {
            return Err(RewardsError::invalid(
                "split",
                format!(
                    "platform_bps {} and owner_bps {} add up to more than {BPS}",
                    self.platform_bps, self.owner_bps
                ),
            ));
        }
        Ok(())
    }
}

impl Fee {
    /// The fee for `input` and `output` tokens: each side's price times its tokens over
    /// 1,000, rounded down once on the sum, so a fee is never more than the price says. The
    /// platform's and owner's shares round down; the pool takes what is left, so nothing is
    /// lost to rounding.
    pub fn of(price: &Price, split: &Split, input: u64, output: u64) -> Result<Self, RewardsError> {
        let overflow = || RewardsError::invalid("price", "the fee overflows 128 bits");
        let numerator = price
            .input_per_1k
            .checked_mul(u128::from(input))
            .and_then(|a| {
                price
                    .output_per_1k
                    .checked_mul(u128::from(output))
                    .and_then(|b| a.checked_add(b))
            })
            .ok_or_else(overflow)?;
        let total = numerator / 1_000;
        // `total * bps / BPS` without overflow: split `total` into whole and part of BPS.
        let share = |bps: u32| {
            let bps = u128::from(bps);
            (total / BPS) * bps + (total % BPS) * bps / BPS
        };
        let (platform, owner) = (share(split.platform_bps), share(split.owner_bps));
        let fee = Self {
            total,
            platform,
            owner,
            pool: total - platform - owner,
        };
        fee.check()?;
        Ok(fee)
    }

    /// Conservation: the shares sum to the total.
    pub fn check(&self) -> Result<(), RewardsError> {
        let sum = self
            .platform
            .checked_add(self.owner)
            .and_then(|s| s.checked_add(self.pool));
        if sum != Some(self.total) {
            return Err(RewardsError::Conservation(format!(
                "fee {} split into {} + {} + {}",
                self.total, self.platform, self.owner, self.pool
            )));
        }
        Ok(())
    }
}

/// Serde for u128 amounts as decimal strings (numbers are accepted on input).
pub mod units {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Text(String),
            Number(u64),
        }
        match Either::deserialize(d)? {
            Either::Number(n) => Ok(u128::from(n)),
            Either::Text(t) => t.parse().map_err(|_| {
                serde::de::Error::custom(format!(
                    "{t:?} is not an amount: a whole number of base units, below 2^128"
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fees_round_down_once_and_the_shares_sum_to_the_fee() {
        let price = Price {
            input_per_1k: 1_001,
            output_per_1k: 3_333,
        };
        let split = Split {
            platform_bps: 1_000,
            owner_bps: 2_500,
        };
        let fee = Fee::of(&price, &split, 7, 13).expect("fee");
        // (7 * 1001 + 13 * 3333) / 1000 = 50336 / 1000.
        assert_eq!(fee.total, 50);
        assert_eq!((fee.platform, fee.owner, fee.pool), (5, 12, 33));
        let huge = Price {
            input_per_1k: u128::MAX / 4,
            output_per_1k: 0,
        };
        let fee = Fee::of(&huge, &split, 3, 0).expect("fits");
        assert_eq!(fee.platform + fee.owner + fee.pool, fee.total);
        assert!(matches!(
            Fee::of(&huge, &split, 5, 0),
            Err(RewardsError::Invalid { field: "price", .. })
        ));
        assert!(Split {
            platform_bps: 6_000,
            owner_bps: 4_001
        }
        .check()
        .is_err());
    }

    #[test]
    fn amounts_cross_json_as_strings() {
        let p: Price = serde_json::from_str(
            r#"{"input_per_1k":"340282366920938463463374607431768211455","output_per_1k":5}"#,
        )
        .expect("price");
        assert_eq!(p.input_per_1k, u128::MAX);
        assert_eq!(
            serde_json::to_value(p).expect("json")["output_per_1k"],
            serde_json::json!("5")
        );
        let err = serde_json::from_str::<Price>(r#"{"input_per_1k":"1.5","output_per_1k":"0"}"#)
            .expect_err("fraction");
        assert!(err.to_string().contains("is not an amount"), "{err}");
    }
}
