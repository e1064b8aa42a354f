//! Bearer tokens and what each role may do.
//!
//! A token is a random secret shown once; the store keeps only its BLAKE3 hash. Each token
//! names a subject (who holds it), a role, optionally the Datanets it is scoped to, and, for a
//! contributor, optionally the one address it may contribute as.
//!
//! | role | may |
//! |---|---|
//! | admin | everything, including making tokens |
//! | curator | create Datanets; curate (review, publish, update) the Datanets it created or was named curator of |
//! | contributor | contribute to public Datanets and to private ones it is scoped to |
//! | reader | read the private Datanets it is scoped to |
//!
//! Anyone, without a token, may read public Datanets.

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::datanet::{Datanet, Visibility};
use crate::identity::Address;
use crate::store::{Store, StoreError, CF_TOKENS};

const TOKEN_PREFIX: &str = "trb_";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Curator,
    Contributor,
    Reader,
}

/// A token's grant, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Grant {
    /// A short public id for the token (not the secret).
    pub id: String,
    pub subject: String,
    pub role: Role,
    /// Datanets the token is scoped to; empty means no scope.
    #[serde(default)]
    pub datanets: Vec<String>,
    /// For contributors: the only address this token may contribute as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
    pub created_at: DateTime<Utc>,
}

/// The caller of a request: a grant, or nobody.
#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    Anonymous,
    Token(Grant),
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Denied {
    #[error("this action needs a bearer token")]
    Unauthenticated,
    #[error("{0}")]
    Forbidden(String),
    /// A private Datanet the caller may not see looks the same as a missing one.
    #[error("no Datanet {0:?}")]
    Hidden(String),
}

impl Principal {
    pub fn grant(&self) -> Option<&Grant> {
        match self {
            Principal::Anonymous => None,
            Principal::Token(g) => Some(g),
        }
    }

    pub fn subject(&self) -> Option<&str> {
        self.grant().map(|g| g.subject.as_str())
    }

    fn role(&self) -> Option<Role> {
        self.grant().map(|g| g.role)
    }

    pub fn is_admin(&self) -> bool {
        self.role() == Some(Role::Admin)
    }

    fn scoped_to(&self, datanet: &str) -> bool {
        self.grant()
            .is_some_and(|g| g.datanets.iter().any(|d| d == datanet))
    }

    fn curates(&self, datanet: &Datanet) -> bool {
        self.is_admin()
            || (self.role() == Some(Role::Curator)
                && self
                    .subject()
                    .is_some_and(|s| datanet.curators.iter().any(|c| c == s)))
    }

    pub fn can_read(&self, datanet: &Datanet) -> Result<(), Denied> {
        if datanet.spec.visibility == Visibility::Public
            || self.curates(datanet)
            || self.scoped_to(&datanet.spec.id)
        {
            Ok(())
        } else {
            Err(Denied::Hidden(datanet.spec.id.clone()))
        }
    }

    /// Any valid token.
    pub fn require_authenticated(&self) -> Result<(), Denied> {
        self.role().map(|_| ()).ok_or(Denied::Unauthenticated)
    }

    pub fn require_admin(&self) -> Result<(), Denied> {
        match self.role() {
            None => Err(Denied::Unauthenticated),
            Some(Role::Admin) => Ok(()),
            Some(_) => Err(Denied::Forbidden("only an admin token may do this".into())),
        }
    }

    pub fn can_create_datanet(&self) -> Result<(), Denied> {
        match self.role() {
            None => Err(Denied::Unauthenticated),
            Some(Role::Admin | Role::Curator) => Ok(()),
            Some(_) => Err(Denied::Forbidden(
                "only curators and admins create Datanets".into(),
            )),
        }
    }

    pub fn can_curate(&self, datanet: &Datanet) -> Result<(), Denied> {
        self.can_read(datanet)?;
        match self.role() {
            None => Err(Denied::Unauthenticated),
            _ if self.curates(datanet) => Ok(()),
            Some(_) => Err(Denied::Forbidden(format!(
                "only a curator of {:?} may do this",
                datanet.spec.id
            ))),
        }
    }

    /// May this caller contribute to `datanet` as `address`?
    pub fn can_contribute(&self, datanet: &Datanet, address: &Address) -> Result<(), Denied> {
        self.can_read(datanet)?;
        let grant = self.grant().ok_or(Denied::Unauthenticated)?;
        match grant.role {
            Role::Admin => Ok(()),
            Role::Curator if self.curates(datanet) => Ok(()),
            Role::Contributor => match grant.address {
                Some(bound) if &bound != address => Err(Denied::Forbidden(format!(
                    "this token may contribute only as {bound}, not {address}"
                ))),
                _ => Ok(()),
            },
            Role::Curator | Role::Reader => Err(Denied::Forbidden(
                "this token's role may not contribute; a contributor token is needed".into(),
            )),
        }
    }

    /// Withdrawals are proved by signature; any token that may contribute may carry one.
    pub fn can_withdraw(&self, datanet: &Datanet, address: &Address) -> Result<(), Denied> {
        self.can_contribute(datanet, address)
    }
}

/// A new token: its grant, and the secret shown once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IssuedToken {
    pub token: String,
    #[serde(flatten)]
    pub grant: Grant,
}

/// What an admin asks for when making a token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub subject: String,
    pub role: Role,
    #[serde(default)]
    pub datanets: Vec<String>,
    #[serde(default)]
    pub address: Option<Address>,
}

fn secret_key(secret: &str) -> Vec<u8> {
    blake3::hash(secret.as_bytes()).as_bytes().to_vec()
}

pub fn issue(store: &Store, request: TokenRequest) -> Result<IssuedToken, StoreError> {
    let mut secret_bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret_bytes);
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(secret_bytes));
    let id = hex::encode(&blake3::hash(token.as_bytes()).as_bytes()[..6]);
    let grant = Grant {
        id,
        subject: request.subject,
        role: request.role,
        datanets: request.datanets,
        address: request.address,
        created_at: Utc::now(),
    };
    let mut batch = store.batch();
    batch.put_json(CF_TOKENS, secret_key(&token), &grant)?;
    batch.commit()?;
    Ok(IssuedToken { token, grant })
}

/// Looks a presented secret up; `None` if no such token exists.
pub fn authenticate(store: &Store, secret: &str) -> Result<Option<Grant>, StoreError> {
    if !secret.starts_with(TOKEN_PREFIX) {
        return Ok(None);
    }
    store.get_json(CF_TOKENS, &secret_key(secret))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datanet::schema::DatanetSchema;
    use crate::datanet::{DatanetSpec, InvalidRows, ReviewMode};

    fn grant(role: Role, subject: &str, datanets: &[&str]) -> Principal {
        Principal::Token(Grant {
            id: "x".into(),
            subject: subject.into(),
            role,
            datanets: datanets.iter().map(|s| s.to_string()).collect(),
            address: None,
            created_at: Utc::now(),
        })
    }

    fn datanet(visibility: Visibility) -> Datanet {
        Datanet {
            spec: DatanetSpec {
                id: "d".into(),
                name: "D".into(),
                description: String::new(),
                tags: vec![],
                license: "MIT".into(),
                schema: DatanetSchema::text_only(),
                visibility,
                review: ReviewMode::Manual,
                invalid_rows: InvalidRows::Reject,
                validators: vec![],
                on_validator_failure: Default::default(),
            },
            curators: vec!["carol".into()],
            created_at: Utc::now(),
            batches: 0,
            versions: 0,
        }
    }

    #[test]
    fn roles_see_and_change_only_what_they_own() {
        let address = Address([7u8; 20]);
        let public = datanet(Visibility::Public);
        let private = datanet(Visibility::Private);
        let anon = Principal::Anonymous;
        let admin = grant(Role::Admin, "root", &[]);
        let curator = grant(Role::Curator, "carol", &[]);
        let other_curator = grant(Role::Curator, "mallory", &[]);
        let contributor = grant(Role::Contributor, "alice", &[]);
        let scoped_contributor = grant(Role::Contributor, "alice", &["d"]);
        let reader = grant(Role::Reader, "rita", &["d"]);

        // (who, can read private, can contribute public, can curate public)
        let table: [(&Principal, bool, bool, bool); 7] = [
            (&anon, false, false, false),
            (&admin, true, true, true),
            (&curator, true, true, true),
            (&other_curator, false, false, false),
            (&contributor, false, true, false),
            (&scoped_contributor, true, true, false),
            (&reader, true, false, false),
        ];
        for (who, read_private, contribute, curate) in table {
            assert!(who.can_read(&public).is_ok(), "{who:?} reads public");
            assert_eq!(
                who.can_read(&private).is_ok(),
                read_private,
                "{who:?} reads private"
            );
            assert_eq!(
                who.can_contribute(&public, &address).is_ok(),
                contribute,
                "{who:?}"
            );
            assert_eq!(who.can_curate(&public).is_ok(), curate, "{who:?} curates");
        }
        assert_eq!(
            contributor.can_contribute(&private, &address),
            Err(Denied::Hidden("d".into()))
        );
    }

    #[test]
    fn bound_contributor_token_contributes_only_as_its_address() {
        let mine = Address([1u8; 20]);
        let theirs = Address([2u8; 20]);
        let Principal::Token(mut g) = grant(Role::Contributor, "alice", &[]) else {
            unreachable!()
        };
        g.address = Some(mine);
        let p = Principal::Token(g);
        let d = datanet(Visibility::Public);
        assert!(p.can_contribute(&d, &mine).is_ok());
        assert!(matches!(
            p.can_contribute(&d, &theirs),
            Err(Denied::Forbidden(_))
        ));
    }

    #[test]
    fn issued_tokens_authenticate_and_unknown_ones_do_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let issued = issue(
            &store,
            TokenRequest {
                subject: "a".into(),
                role: Role::Reader,
                datanets: vec![],
                address: None,
            },
        )
        .expect("issue");
        assert_eq!(
            authenticate(&store, &issued.token).expect("auth"),
            Some(issued.grant)
        );
        assert_eq!(authenticate(&store, "trb_00").expect("auth"), None);
        assert_eq!(authenticate(&store, "nonsense").expect("auth"), None);
    }
}
