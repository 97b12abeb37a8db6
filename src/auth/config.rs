//! `[authorization]` as the config file writes it: users, passwords, tokens, nkeys
//! and their permissions (compiled by [`super::Authenticator`]).

use std::time::Duration;

use serde::Deserialize;

use crate::values::{Dur, Secret};

/// Who may publish or subscribe where: a list of allowed subjects, or allow and deny
/// lists. Subscribe entries may name a queue group after a space (`"jobs.> workers"`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum SubjectPermissionConfig {
    Allow(Vec<String>),
    Rules {
        #[serde(default)]
        allow: Option<Vec<String>>,
        #[serde(default)]
        deny: Vec<String>,
    },
}

/// `allow_responses`: `true` (one reply within two minutes per request received), or
/// the number of replies and how long they may take.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum AllowResponsesConfig {
    Enabled(bool),
    Limits {
        /// Replies per request (0: one; negative: unlimited).
        #[serde(default)]
        max: Option<i64>,
        #[serde(default)]
        expires: Option<Dur>,
    },
}

/// A user's permissions.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PermissionsConfig {
    pub publish: Option<SubjectPermissionConfig>,
    pub subscribe: Option<SubjectPermissionConfig>,
    pub allow_responses: Option<AllowResponsesConfig>,
}

/// One entry of `[[authorization.users]]`: a user with a password (plain or bcrypt),
/// or an nkey.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UserConfig {
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub nkey: Option<String>,
    pub permissions: Option<PermissionsConfig>,
}

/// `[authorization]`: how clients prove who they are. Without any of it, every client
/// is accepted with all permissions.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthorizationConfig {
    /// A single user and password (plain or bcrypt).
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// A single token (plain or bcrypt).
    pub token: Option<Secret>,
    /// Time a new connection has to authenticate (default 2 s).
    pub timeout: Option<Dur>,
    /// Clients that send no credentials at all are this user (one of `users`).
    pub no_auth_user: Option<String>,
    pub users: Vec<UserConfig>,
    /// Permissions of users that have none of their own.
    pub default_permissions: Option<PermissionsConfig>,
}

/// The reference's authentication timeout.
pub const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(2);

/// `[accounts.NAME]`: an account of its own — its users, whether it has JetStream,
/// what it exports to other accounts and what it imports from them (nats-server's
/// `accounts { NAME: { … } }`). Accounts see nothing of each other but what they export
/// and import.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccountConfig {
    pub users: Vec<UserConfig>,
    /// JetStream for this account (the node's `[jetstream]` must be enabled).
    pub jetstream: bool,
    pub exports: Vec<ExportConfig>,
    pub imports: Vec<ImportConfig>,
}

/// One export: a stream (messages published on the subject) or a service (requests
/// to it), public or for the listed accounts only.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    pub stream: Option<String>,
    pub service: Option<String>,
    /// How many responses a service request may get: `singleton` (the default),
    /// `stream` or `chunked`.
    pub response_type: Option<ResponseTypeConfig>,
    /// Only these accounts may import it (public when absent).
    pub accounts: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponseTypeConfig {
    Singleton,
    Stream,
    Chunked,
}

/// Where an import comes from: the exporting account and the subject.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportSourceConfig {
    pub account: String,
    pub subject: String,
}

/// One import: a stream or a service of another account, optionally under another
/// subject here (`to`; `prefix` puts a prefix before a stream's subjects).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImportConfig {
    pub stream: Option<ImportSourceConfig>,
    pub service: Option<ImportSourceConfig>,
    pub to: Option<String>,
    pub prefix: Option<String>,
}
