//! Tenant identity, spec and status vocabulary.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// A tenant's stable identifier; the value carried as `tenant_id` everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, format = Uuid)]
pub struct TenantId(pub Uuid);

impl TenantId {
    pub fn new() -> Self {
        // v7 ids sort by creation time, which keeps indexes led by tenant_id compact.
        Self(Uuid::now_v7())
    }
}

impl Default for TenantId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for TenantId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// Why a string is not a valid tenant field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidField {
    #[error(
        "slug `{0}` is invalid: use 3 to 40 characters of lowercase letters, digits and hyphens, starting with a letter and not ending with a hyphen"
    )]
    Slug(String),
    #[error("name must be 1 to 100 characters and not blank")]
    Name,
    #[error("`{0}` is not a valid email address")]
    Email(String),
}

/// The URL-safe handle of a tenant (`acme-shoes`): lowercase letters, digits and
/// hyphens, 3 to 40 characters, starting with a letter, not ending with a hyphen.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, pattern = "^[a-z][a-z0-9-]{1,38}[a-z0-9]$", example = "acme-shoes")]
pub struct Slug(String);

impl Slug {
    pub const MIN_LEN: usize = 3;
    pub const MAX_LEN: usize = 40;

    pub fn parse(raw: &str) -> Result<Self, InvalidField> {
        let bytes = raw.as_bytes();
        let valid = (Self::MIN_LEN..=Self::MAX_LEN).contains(&bytes.len())
            && bytes[0].is_ascii_lowercase()
            && bytes[bytes.len() - 1] != b'-'
            && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
        if valid { Ok(Self(raw.to_owned())) } else { Err(InvalidField::Slug(raw.to_owned())) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Slug {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Slug::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// A tenant's display name: trimmed, 1 to 100 characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = String)]
pub struct TenantName(String);

impl TenantName {
    pub fn parse(raw: &str) -> Result<Self, InvalidField> {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.chars().count() > 100 || trimmed.chars().any(char::is_control) {
            return Err(InvalidField::Name);
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address, checked for shape only (delivery proves the rest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, format = "email")]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, InvalidField> {
        let invalid = || InvalidField::Email(raw.to_owned());
        let (local, domain) = raw.split_once('@').ok_or_else(invalid)?;
        let well_formed = !local.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains('@')
            && raw.len() <= 254
            && !raw.chars().any(|c| c.is_whitespace() || c.is_control());
        if well_formed { Ok(Self(raw.to_owned())) } else { Err(invalid()) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Generates `as_str`, `Display` and `FromStr` for a fieldless enum from one
/// table of variant ⇄ wire name, so the database, JSON and CLI spell it alike.
#[macro_export]
macro_rules! wire_enum {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $name),+ }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = $crate::tenant::UnknownVariant;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    other => Err($crate::tenant::UnknownVariant {
                        kind: stringify!($ty),
                        value: other.to_owned(),
                        expected: &[$($name),+],
                    }),
                }
            }
        }
    };
}

/// A string that names none of an enum's variants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{value}`; expected one of: {}", expected.join(", "))]
pub struct UnknownVariant {
    pub kind: &'static str,
    pub value: String,
    pub expected: &'static [&'static str],
}

/// Where a tenant's rows live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// The shared database, every row tagged with `tenant_id`, row-level security forced.
    Pool,
    /// A dedicated database for this tenant alone.
    Silo,
}
wire_enum!(Isolation { Pool => "pool", Silo => "silo" });

/// What the operators want for a tenant: the lifecycle part of its spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// Being onboarded: recorded, not serving until its onboarding workflow ends.
    Pending,
    Active,
    Suspended,
    Deleted,
}
wire_enum!(Lifecycle { Pending => "pending", Active => "active", Suspended => "suspended", Deleted => "deleted" });

/// Where a tenant stands as last observed by the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Recorded, not yet acted on.
    Pending,
    /// Resources are being created or changed.
    Provisioning,
    /// Serving, and the observed state matches the spec.
    Ready,
    /// Serving, but something observed does not match the spec.
    Degraded,
    /// Not serving because the spec says suspended.
    Suspended,
    /// Resources are being released.
    Deleting,
    /// Everything released; only the record and its audit trail remain.
    Deleted,
    /// A transition failed; the conditions say why.
    Failed,
}
wire_enum!(Phase {
    Pending => "pending",
    Provisioning => "provisioning",
    Ready => "ready",
    Degraded => "degraded",
    Suspended => "suspended",
    Deleting => "deleting",
    Deleted => "deleted",
    Failed => "failed",
});

/// One observed fact about a tenant, in the style of Kubernetes conditions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Condition {
    /// What the condition is about, e.g. `Ready`, `DatabaseReady`, `BillingReady`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `true`, `false` or `unknown`.
    pub status: ConditionStatus,
    /// A machine-readable CamelCase reason, e.g. `AwaitingReconcile`.
    pub reason: String,
    /// A sentence for the operator.
    pub message: String,
    pub last_transition_at: chrono::DateTime<chrono::Utc>,
}

impl Condition {
    /// A condition that changed now: `status` true or false, with its reason and message.
    pub fn new(kind: &str, status: bool, reason: &str, message: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            status: if status { ConditionStatus::True } else { ConditionStatus::False },
            reason: reason.into(),
            message: message.into(),
            last_transition_at: chrono::Utc::now(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// Admin API roles, ordered from least to most privileged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A data plane's own identity, not a person's: it reads the routing table
    /// and the daily call counts and reports usage (for its one tenant, when
    /// bound to one), and nothing else of the admin API.
    #[serde(rename = "dataplane")]
    DataPlane,
    /// Reads everything.
    Viewer,
    /// Also changes plans, suspends, resumes and triggers reconciles.
    Operator,
    /// Also offboards tenants and manages API tokens.
    Admin,
}
wire_enum!(Role { DataPlane => "dataplane", Viewer => "viewer", Operator => "operator", Admin => "admin" });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slug_rule() {
        for ok in ["abc", "acme-shoes", "a1-b2", &format!("a{}", "b".repeat(39))] {
            assert!(Slug::parse(ok).is_ok(), "{ok} should be valid");
        }
        for bad in ["", "ab", "Acme", "1abc", "-abc", "abc-", "ab_c", "ab c", "ábc", &format!("a{}", "b".repeat(40))] {
            assert!(Slug::parse(bad).is_err(), "{bad} should be invalid");
        }
    }

    #[test]
    fn email_shape() {
        assert!(Email::parse("owner@acme.example").is_ok());
        for bad in ["", "owner", "@acme.example", "owner@", "owner@acme", "a b@c.d", "a@b@c.d", "a@.c"] {
            assert!(Email::parse(bad).is_err(), "{bad} should be invalid");
        }
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(TenantName::parse("  Acme  ").unwrap().as_str(), "Acme");
        assert!(TenantName::parse("   ").is_err());
        assert!(TenantName::parse(&"x".repeat(101)).is_err());
    }

    #[test]
    fn wire_names_round_trip() {
        for phase in Phase::ALL {
            assert_eq!(phase.as_str().parse::<Phase>().unwrap(), *phase);
            assert_eq!(serde_json::to_value(phase).unwrap(), phase.as_str());
        }
        let err = "gold".parse::<Isolation>().unwrap_err();
        assert_eq!(err.to_string(), "unknown Isolation `gold`; expected one of: pool, silo");
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
    }
}
