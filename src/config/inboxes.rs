//! `[[inbox]]` tables -> the compiled recipient table (`Inboxes`): hosted addresses and domains,
//! each inbox's policy, rules and admins. `resolve` is what RCPT asks. Every error with its key
//! path.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::auth::{inbox_auth, AuthPolicy};
use super::errors::Errors;
use super::raw::{RawInbox, RawServer};
use super::routes;
use super::values::{normalize_address, split_address};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxConfig {
    pub id: String,
    pub name: Option<String>,
    /// Canonical hosted address, lower case.
    pub address: String,
    pub aliases: Vec<String>,
    pub auth: AuthPolicy,
    pub from_name: Option<String>,
    /// The team's mailbox (or `@domain`) whose forwarded mail connects the inbox.
    pub connected_address: Option<String>,
    pub tickets: routes::TicketDefaults,
    pub rules: Vec<routes::Rule>,
    /// Who is told by email about this inbox's setup (provider confirmations): addresses,
    /// resolved from user ids where configured that way.
    pub admins: Vec<String>,
    /// The address this inbox's outbound mail should come from; used only once verified
    /// (`inbound inboxes verify-from`), until then the relay's `from`.
    pub from_address: Option<String>,
    pub from_name_mode: FromNameMode,
    /// The team signature, `{first_name}`/`{full_name}` tokens kept for the sender to fill in.
    pub signature: Option<String>,
    /// Where the inbox is defined: the config file is the declarative way and wins; inboxes
    /// created through the API live in the store and can be changed there.
    pub source: InboxSource,
}

/// Where an inbox, a user or a team is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InboxSource {
    /// An `[[inbox]]` table of the config file: read-only through the API.
    Config,
    /// `POST /v1/inboxes`: kept in the store.
    Api,
}

/// How the From name of the inbox's outbound mail is made (the two modes of hosted team
/// inboxes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FromNameMode {
    /// "Jane at ACME Support".
    AgentAndCompany,
    /// "ACME Support".
    #[default]
    Company,
}

/// The tokens a team signature may hold, filled in with the writing agent's name.
pub const SIGNATURE_TOKENS: [&str; 2] = ["{first_name}", "{full_name}"];

/// Where an inbox created through the API appears in error paths: where to change it.
pub fn api_path(id: &str) -> String {
    format!("/v1/inboxes/{id}")
}

/// The compiled recipient table: hosted address -> inbox, and the set of hosted domains.
#[derive(Debug, Clone, Default)]
pub struct Inboxes {
    /// Shared with the configs before and after a change: adding one inbox through the API
    /// copies pointers, not every compiled inbox.
    pub list: Vec<Arc<InboxConfig>>,
    // The indexes below hold shared strings for the same reason: cloning one copies its
    // table and counts references, it allocates nothing per entry (with thousands of inboxes,
    // copying every key and freeing the old config's was most of an API create).
    /// Hosted address (lower case) -> the inbox's place in `list` and the key path that
    /// claimed it (what a duplicate's error names: "also inbox[0].address").
    by_address: HashMap<Arc<str>, (usize, Arc<str>)>,
    domains: HashSet<Arc<str>>,
    /// Inbox id -> the key path that claimed it and the inbox's place in `list`.
    ids: HashMap<Arc<str>, (Arc<str>, usize)>,
    /// From name (lower case) -> the key path that claimed it.
    from_names: HashMap<Arc<str>, Arc<str>>,
}

/// What a RCPT address resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient<'a> {
    Hosted {
        inbox: &'a InboxConfig,
        tag: Option<String>,
    },
    /// A hosted domain, but no such inbox.
    UnknownMailbox,
    /// Not a domain we host: accepting would make us a relay.
    ForeignDomain,
}

impl Inboxes {
    /// Resolve a RCPT address. Domains and local parts compare case-insensitively (RFC 5321 allows
    /// case-sensitive local parts, but no operator wants `Support@` bounced); `local+tag@domain`
    /// reaches `local@domain` and keeps the tag.
    pub fn resolve(&self, address: &str) -> Recipient<'_> {
        // RFC 5321 §4.5.1: `postmaster` (bare, or at any domain we host) must be accepted; it
        // reaches the first inbox of that domain unless an inbox claims the address itself.
        if address.eq_ignore_ascii_case("postmaster") {
            return match self.list.first() {
                Some(inbox) => Recipient::Hosted { inbox, tag: None },
                None => Recipient::UnknownMailbox,
            };
        }
        let Some((local, domain)) = split_address(address) else {
            return Recipient::UnknownMailbox;
        };
        let domain = super::values::normalize_domain(domain);
        if !self.domains.contains(domain.as_str()) {
            return Recipient::ForeignDomain;
        }
        let local = local.to_lowercase();
        if let Some(&(i, _)) = self.by_address.get(format!("{local}@{domain}").as_str()) {
            return Recipient::Hosted {
                inbox: &self.list[i],
                tag: None,
            };
        }
        if let Some((base, tag)) = local.split_once('+') {
            if let Some(&(i, _)) = self.by_address.get(format!("{base}@{domain}").as_str()) {
                return Recipient::Hosted {
                    inbox: &self.list[i],
                    tag: Some(tag.to_string()),
                };
            }
        }
        if local == "postmaster" {
            let first = self.list.iter().find(|i| {
                std::iter::once(&i.address)
                    .chain(&i.aliases)
                    .any(|a| a.rsplit_once('@').is_some_and(|(_, d)| d == domain))
            });
            if let Some(inbox) = first {
                return Recipient::Hosted { inbox, tag: None };
            }
        }
        Recipient::UnknownMailbox
    }

    pub fn get(&self, id: &str) -> Option<&InboxConfig> {
        self.ids.get(id).map(|(_, i)| &*self.list[*i])
    }
}

fn compile_admins(
    raw: &[String],
    directory: &routes::Directory,
    path: &str,
    errors: &mut Errors,
) -> Vec<String> {
    let mut out = Vec::new();
    for (i, a) in raw.iter().enumerate() {
        let key = format!("{path}.admins[{i}]");
        if a.contains('@') {
            match normalize_address(a) {
                Some(n) => out.push(n),
                None => errors.push(key, format!("invalid address {a:?}")),
            }
        } else {
            match directory.users.get(a) {
                None => errors.push(key, format!("unknown user {a:?} (a user id or an address)")),
                Some(u) => match &u.email {
                    Some(e) => out.push(e.clone()),
                    None => errors.push(key, format!("user {a:?} has no email to notify")),
                },
            }
        }
    }
    out
}

pub(super) fn compile_inboxes(
    raw: &[(String, RawInbox)],
    global_auth: &AuthPolicy,
    directory: &routes::Directory,
    errors: &mut Errors,
) -> Inboxes {
    let mut out = Inboxes::default();
    for (path, inbox) in raw {
        out.add(path, inbox, global_auth, directory, errors);
    }
    out
}

impl Inboxes {
    /// Compile one more `[[inbox]]` (at key path `path`) into the table: its own checks, and
    /// ids, addresses and from names unique against every inbox already in it. Adding inboxes
    /// one by one gives the same table and errors as compiling them together.
    pub(super) fn add(
        &mut self,
        path: &str,
        inbox: &RawInbox,
        global_auth: &AuthPolicy,
        directory: &routes::Directory,
        errors: &mut Errors,
    ) {
        let out = self;
        if inbox.id.is_empty()
            || !inbox
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            errors.push(
                format!("{path}.id"),
                format!("invalid inbox id {:?} (letters, digits, - and _)", inbox.id),
            );
        } else if let Some((first, _)) = out.ids.get(inbox.id.as_str()) {
            errors.push(
                format!("{path}.id"),
                format!("duplicate inbox id {:?} (also {first})", inbox.id),
            );
        } else {
            out.ids
                .insert(inbox.id.as_str().into(), (path.into(), out.list.len()));
        }
        let index = out.list.len();
        let mut addresses = Vec::new();
        let primary = inbox.address.clone().unwrap_or_default();
        let all = std::iter::once((format!("{path}.address"), &primary)).chain(
            inbox
                .aliases
                .iter()
                .enumerate()
                .map(|(j, a)| (format!("{path}.aliases[{j}]"), a)),
        );
        for (key, address) in all {
            match normalize_address(address) {
                None => errors.push(&key, format!("invalid address {address:?}")),
                Some(a) if a.split_once('@').is_some_and(|(l, _)| l.contains('+')) => {
                    errors.push(&key, format!("{a:?}: '+' is reserved for sub-addressing"))
                }
                Some(a) => {
                    if let Some((_, first)) = out.by_address.get(a.as_str()) {
                        errors.push(
                            &key,
                            format!("duplicate hosted address {a:?} (also {first})"),
                        );
                    } else {
                        out.by_address
                            .insert(a.as_str().into(), (index, key.as_str().into()));
                        out.domains
                            .insert(a.split_once('@').map(|(_, d)| d).unwrap_or_default().into());
                        addresses.push(a);
                    }
                }
            }
        }
        let mut addresses = addresses.into_iter();
        let mut compiled = InboxConfig {
            id: inbox.id.clone(),
            name: inbox.name.clone(),
            address: addresses.next().unwrap_or_default(),
            aliases: addresses.collect(),
            auth: inbox_auth(global_auth, inbox.auth.as_ref(), path, errors),
            from_name: inbox.from_name.clone(),
            connected_address: inbox
                .connected_address
                .as_ref()
                .map(|a| a.trim().to_lowercase()),
            tickets: routes::compile_tickets(inbox.tickets.as_ref()),
            rules: routes::compile_rules(&inbox.rule, directory, path, errors),
            admins: compile_admins(&inbox.admins, directory, path, errors),
            from_address: inbox.from_address.as_ref().and_then(|a| {
                let n = normalize_address(a);
                if n.is_none() {
                    errors.push(
                        format!("{path}.from_address"),
                        format!("invalid address {a:?}"),
                    );
                }
                n
            }),
            from_name_mode: compile_from_name_mode(inbox, path, errors),
            signature: compile_signature(inbox, path, errors),
            source: if path.starts_with("inbox[") {
                InboxSource::Config
            } else {
                InboxSource::Api
            },
        };
        if let Some(rule) = compile_auto_assign(inbox, directory, path, errors) {
            compiled.rules.push(rule);
        }
        out.list.push(Arc::new(compiled));
        if let Some(name) = &inbox.from_name {
            let key = name.trim().to_lowercase();
            if let Some(first) = out.from_names.get(key.as_str()) {
                errors.push(
                    format!("{path}.from_name"),
                    format!("duplicate from_name {name:?} (also {first}.from_name): recipients could not tell the inboxes apart"),
                );
            } else {
                out.from_names.insert(key.into(), path.into());
            }
        }
    }
}

fn compile_from_name_mode(inbox: &RawInbox, path: &str, errors: &mut Errors) -> FromNameMode {
    match inbox.from_name_mode.as_deref() {
        None | Some("company") => FromNameMode::Company,
        Some("agent_and_company") => FromNameMode::AgentAndCompany,
        Some(other) => {
            errors.push(
                format!("{path}.from_name_mode"),
                format!("{other:?} is not one of agent_and_company, company"),
            );
            FromNameMode::Company
        }
    }
}

/// A signature may hold only the known tokens: a misspelt `{firstname}` would reach customers
/// as it is.
fn compile_signature(inbox: &RawInbox, path: &str, errors: &mut Errors) -> Option<String> {
    let text = inbox.signature.as_ref()?;
    let mut rest = text.as_str();
    while let Some(start) = rest.find('{') {
        let end = rest[start..].find('}').map(|e| start + e + 1);
        let token = &rest[start..end.unwrap_or(rest.len())];
        if !SIGNATURE_TOKENS.contains(&token) {
            errors.push(
                format!("{path}.signature"),
                format!(
                    "unknown token {token:?} (the signature may use {})",
                    SIGNATURE_TOKENS.join(" and ")
                ),
            );
            break;
        }
        rest = &rest[end.unwrap_or(rest.len())..];
    }
    if text.len() > MAX_SIGNATURE_BYTES {
        errors.push(
            format!("{path}.signature"),
            format!("longer than {MAX_SIGNATURE_BYTES} bytes"),
        );
    }
    Some(text.clone())
}

/// Bound on a team signature (it is repeated in every outbound mail).
pub const MAX_SIGNATURE_BYTES: usize = 4096;

/// `auto_assign` becomes the inbox's last rule: it matches every message no earlier rule took.
/// Off (`enabled = false`) keeps its members checked but adds no rule.
fn compile_auto_assign(
    inbox: &RawInbox,
    directory: &routes::Directory,
    path: &str,
    errors: &mut Errors,
) -> Option<routes::Rule> {
    let auto = inbox.auto_assign.as_ref()?;
    let key = format!("{path}.auto_assign");
    let raw = super::raw::RawAssign {
        users: auto.users.clone(),
        teams: auto.teams.clone(),
        strategy: auto.strategy.clone(),
        ..Default::default()
    };
    let assign = routes::compile_assign(&raw, directory, &key, errors);
    if !auto.enabled.unwrap_or(true) {
        return None;
    }
    if let Some(i) = inbox
        .rule
        .iter()
        .position(|r| routes::is_catch_all(&r.when))
    {
        errors.push(
            key,
            format!("never used: {path}.rule[{i}] matches every message and comes first"),
        );
    }
    Some(routes::Rule {
        name: "auto_assign".into(),
        when: routes::Match::default(),
        assign: Some(assign),
        ticket: None,
    })
}

/// `server.address_pattern`, or its default.
pub(super) fn address_pattern(server: &RawServer) -> String {
    server
        .address_pattern
        .clone()
        .unwrap_or_else(|| "{local}@{tenant}.{hosted_domain}".into())
}

/// Who is named when the file and the inboxes created through the API clash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// Start, reload and `check-config`: the file's key is at fault (the API inbox exists and
    /// may already receive mail).
    File,
    /// An API change: the last API inbox given is the one being created or changed.
    Last,
}

impl super::Config {
    /// This config with the inboxes created through the API (`api`: their specs, addresses
    /// already made) compiled together with the file's into one recipient table, checked as one:
    /// ids, addresses and from names are unique across both, and an API inbox's address must be
    /// under a hosted domain. The file's inboxes come first in the table.
    pub fn with_api_inboxes(
        &self,
        api: &[RawInbox],
        blame: Blame,
    ) -> Result<super::Config, super::ConfigErrors> {
        let api: Vec<(String, RawInbox)> =
            api.iter().map(|i| (api_path(&i.id), i.clone())).collect();
        let compile = |list: Vec<(String, RawInbox)>, errors: &mut Errors| {
            compile_inboxes(&list, &self.auth.policy, &self.directory, errors)
        };
        let file_first = || {
            self.file_inboxes
                .iter()
                .chain(api.iter())
                .cloned()
                .collect()
        };
        let mut errors = Errors::default();
        let inboxes = match blame {
            Blame::Last => compile(file_first(), &mut errors),
            Blame::File => {
                compile(
                    api.iter()
                        .chain(self.file_inboxes.iter())
                        .cloned()
                        .collect(),
                    &mut errors,
                );
                compile(file_first(), &mut Errors::default())
            }
        };
        for (path, inbox) in &api {
            self.check_hosted(path, inbox, &mut errors);
        }
        if !errors.0.is_empty() {
            return Err(super::ConfigErrors(errors.0));
        }
        let mut out = self.clone();
        out.inboxes = inboxes;
        out.api_inboxes = api.into_iter().map(|(_, i)| Arc::new(i)).collect();
        Ok(out)
    }

    /// This config with one more API inbox: the same checks and table as `with_api_inboxes`
    /// with `spec` last, without compiling the others again (creating an inbox costs the same
    /// however many there are).
    pub fn with_api_inbox_added(
        &self,
        spec: &RawInbox,
    ) -> Result<super::Config, super::ConfigErrors> {
        let path = api_path(&spec.id);
        let mut errors = Errors::default();
        let mut out = self.clone();
        out.inboxes
            .add(&path, spec, &self.auth.policy, &self.directory, &mut errors);
        self.check_hosted(&path, spec, &mut errors);
        if !errors.0.is_empty() {
            return Err(super::ConfigErrors(errors.0));
        }
        out.api_inboxes.push(Arc::new(spec.clone()));
        Ok(out)
    }

    /// An API inbox's address must be under a hosted domain: `server.hosted_domain` (and its
    /// subdomains) or a domain of the file's inboxes.
    fn check_hosted(&self, path: &str, inbox: &RawInbox, errors: &mut Errors) {
        let address = inbox.address.clone().unwrap_or_default();
        let Some(domain) = normalize_address(&address)
            .and_then(|a| a.rsplit_once('@').map(|(_, d)| d.to_string()))
        else {
            return;
        };
        let file_domains: HashSet<&str> = self
            .file_inboxes
            .iter()
            .filter_map(|(_, i)| i.address.as_deref()?.rsplit_once('@').map(|(_, d)| d))
            .collect();
        if !self.is_hosted_domain(&domain, &file_domains) {
            errors.push(
                format!("{path}.address"),
                format!(
                    "{domain:?} is not a domain hosted here ({})",
                    self.hosted_domains_described(&file_domains)
                ),
            );
        }
    }

    fn is_hosted_domain(&self, domain: &str, file_domains: &HashSet<&str>) -> bool {
        let under_hosted = self.hosted_domain.as_deref().is_some_and(|h| {
            domain == h || domain.strip_suffix(h).is_some_and(|p| p.ends_with('.'))
        });
        under_hosted || file_domains.contains(domain)
    }

    fn hosted_domains_described(&self, file_domains: &HashSet<&str>) -> String {
        let mut list: Vec<String> = file_domains.iter().map(|d| d.to_string()).collect();
        list.sort();
        if let Some(h) = &self.hosted_domain {
            list.insert(0, format!("{h} and its subdomains"));
        }
        if list.is_empty() {
            "none: set server.hosted_domain".into()
        } else {
            format!("hosted: {}", list.join(", "))
        }
    }

    /// The address `address_pattern` makes for a tenant and local part, when
    /// `server.hosted_domain` is set.
    pub fn generated_address(&self, tenant: &str, local: &str) -> Option<String> {
        let hosted = self.hosted_domain.as_deref()?;
        Some(
            self.address_pattern
                .replace("{local}", local)
                .replace("{tenant}", tenant)
                .replace("{hosted_domain}", hosted),
        )
    }
}

/// Give every inbox without an `address` one made from `server.address_pattern` (default
/// "{local}@{tenant}.{hosted_domain}").
pub(super) fn generate_addresses(
    inboxes: &mut [(String, RawInbox)],
    server: &RawServer,
    errors: &mut Errors,
) {
    let pattern = address_pattern(server);
    for (path, inbox) in inboxes {
        if inbox.address.is_some() {
            continue;
        }
        match (&inbox.tenant, &server.hosted_domain) {
            (Some(tenant), Some(hosted)) => {
                let local = inbox.local.clone().unwrap_or_else(|| inbox.id.clone());
                inbox.address = Some(
                    pattern
                        .replace("{local}", &local)
                        .replace("{tenant}", tenant)
                        .replace("{hosted_domain}", hosted),
                );
            }
            _ => errors.push(
                format!("{path}.address"),
                "give an address, or a tenant (with server.hosted_domain) to generate one",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn recipients_resolve_case_insensitively_with_tags() {
        let c = Config::embedded_default();
        let r = |a| c.inboxes.resolve(a);
        assert!(matches!(
            r("SUPPORT@Demo.Inbound.Test"),
            Recipient::Hosted { tag: None, .. }
        ));
        assert!(
            matches!(r("support+billing@demo.inbound.test"), Recipient::Hosted { tag: Some(t), .. } if t == "billing")
        );
        assert_eq!(r("sales@demo.inbound.test"), Recipient::UnknownMailbox);
        assert_eq!(r("support@example.com"), Recipient::ForeignDomain);
        assert_eq!(r("nobody"), Recipient::UnknownMailbox);
        assert!(matches!(r("postmaster"), Recipient::Hosted { .. }));
        assert!(matches!(
            r("PostMaster@demo.inbound.test"),
            Recipient::Hosted { .. }
        ));
        assert_eq!(r("postmaster@example.com"), Recipient::ForeignDomain);
    }
}
