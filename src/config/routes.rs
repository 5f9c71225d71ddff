//! Raw users, teams, contacts and `[[inbox.rule]]` tables -> the compiled routing table the hot
//! path reads: lower-cased match values, team names expanded to member lists, every reference
//! checked (unknown users or teams and unreachable rules are errors with their key paths).

use std::collections::{BTreeMap, HashSet};

use super::raw::{RawAssign, RawContact, RawMatch, RawRule, RawTeam, RawTickets, RawUser};
use super::Errors;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    /// As configured; a runtime override (API) may change it.
    pub available: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Team {
    pub id: String,
    pub name: Option<String>,
    pub members: Vec<String>,
}

/// People and ownership, shared by every inbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directory {
    pub users: BTreeMap<String, User>,
    pub teams: BTreeMap<String, Team>,
    /// Contact owners by exact address (lower case).
    pub owner_by_address: BTreeMap<String, String>,
    /// Contact owners by domain (lower case); a domain matches its subdomains.
    pub owner_by_domain: BTreeMap<String, String>,
}

impl Directory {
    /// The configured owner of a contact address, if any.
    pub fn owner_of(&self, address: &str) -> Option<&str> {
        let address = address.to_lowercase();
        if let Some(o) = self.owner_by_address.get(&address) {
            return Some(o);
        }
        let mut domain = address.rsplit_once('@').map(|(_, d)| d)?;
        loop {
            if let Some(o) = self.owner_by_domain.get(domain) {
                return Some(o);
            }
            domain = domain.split_once('.')?.1;
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketDefaults {
    pub enabled: bool,
    pub pipeline: String,
    pub stage: String,
    pub priority: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    RoundRobin,
    LeastOpen,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assign {
    /// Users to choose among, team members expanded, in configured order, without duplicates.
    pub candidates: Vec<String>,
    /// For each candidate, the team it came from (if it came from one).
    pub via_team: Vec<Option<String>>,
    pub strategy: Strategy,
    pub owner: bool,
    pub fallback: Vec<String>,
    pub fallback_via_team: Vec<Option<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMatch {
    /// Lower case.
    pub name: String,
    /// Lower case.
    pub contains: Option<String>,
}

/// Conditions of a rule, lower-cased. Empty lists match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    pub from: Vec<String>,
    pub from_domain: Vec<String>,
    pub subject: Vec<String>,
    pub recipient: Vec<String>,
    pub tag: Vec<String>,
    pub header: Vec<HeaderMatch>,
    pub has_attachment: Option<bool>,
    pub attachment_name: Vec<String>,
    pub auth: Option<String>,
    pub dmarc: Option<String>,
}

impl Match {
    /// A rule without conditions matches every message: nothing after it can be reached.
    pub fn is_catch_all(&self) -> bool {
        *self == Match::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `name` from config, or `rule[N]`.
    pub name: String,
    pub when: Match,
    /// `None`: leave unassigned.
    pub assign: Option<Assign>,
    pub ticket: Option<TicketOverride>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TicketOverride {
    pub enabled: Option<bool>,
    pub pipeline: Option<String>,
    pub stage: Option<String>,
    pub priority: Option<String>,
}

fn lower(v: &[String]) -> Vec<String> {
    v.iter()
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

pub(super) fn compile_directory(
    users: &[(String, RawUser)],
    teams: &[(String, RawTeam)],
    contacts: &[(String, RawContact)],
    errors: &mut Errors,
) -> Directory {
    let mut dir = Directory::default();
    for (path, u) in users {
        if u.id.is_empty() {
            errors.push(format!("{path}.id"), "must not be empty");
        } else if dir.users.contains_key(&u.id) {
            errors.push(
                format!("{path}.id"),
                format!("duplicate user id {:?}", u.id),
            );
        }
        dir.users.insert(
            u.id.clone(),
            User {
                id: u.id.clone(),
                name: u.name.clone(),
                email: u.email.clone(),
                available: u.available.unwrap_or(true),
            },
        );
    }
    for (path, t) in teams {
        if dir.teams.contains_key(&t.id) {
            errors.push(
                format!("{path}.id"),
                format!("duplicate team id {:?}", t.id),
            );
        }
        for (i, m) in t.members.iter().enumerate() {
            if !dir.users.contains_key(m) {
                errors.push(
                    format!("{path}.members[{i}]"),
                    format!("unknown user {m:?}"),
                );
            }
        }
        if t.members.is_empty() {
            errors.push(
                format!("{path}.members"),
                "a team needs at least one member",
            );
        }
        dir.teams.insert(
            t.id.clone(),
            Team {
                id: t.id.clone(),
                name: t.name.clone(),
                members: t.members.clone(),
            },
        );
    }
    for (path, c) in contacts {
        if !dir.users.contains_key(&c.owner) {
            errors.push(
                format!("{path}.owner"),
                format!("unknown user {:?}", c.owner),
            );
        }
        match (&c.address, &c.domain) {
            (Some(a), None) => {
                dir.owner_by_address
                    .insert(a.trim().to_lowercase(), c.owner.clone());
            }
            (None, Some(d)) => {
                dir.owner_by_domain.insert(
                    d.trim().trim_start_matches('@').to_lowercase(),
                    c.owner.clone(),
                );
            }
            _ => errors.push(path.clone(), "give exactly one of address or domain"),
        }
    }
    dir
}

impl TicketDefaults {
    /// An inbox's ticket settings with the defaults filled in.
    pub fn from_raw(raw: Option<&RawTickets>) -> TicketDefaults {
        compile_tickets(raw)
    }
}

pub(super) fn compile_tickets(raw: Option<&RawTickets>) -> TicketDefaults {
    let raw = raw.cloned().unwrap_or_default();
    TicketDefaults {
        enabled: raw.enabled.unwrap_or(true),
        pipeline: raw.pipeline.unwrap_or_else(|| "support".into()),
        stage: raw.stage.unwrap_or_else(|| "new".into()),
        priority: raw.priority.unwrap_or_else(|| "normal".into()),
    }
}

/// Expand users and teams into a candidate list, reporting unknown names.
fn candidates(
    users: &[String],
    teams: &[String],
    dir: &Directory,
    path: &str,
    users_key: &str,
    teams_key: &str,
    errors: &mut Errors,
) -> (Vec<String>, Vec<Option<String>>) {
    let mut seen = HashSet::new();
    let (mut out, mut via) = (Vec::new(), Vec::new());
    for (i, u) in users.iter().enumerate() {
        if !dir.users.contains_key(u) {
            errors.push(
                format!("{path}.{users_key}[{i}]"),
                format!("unknown user {u:?}"),
            );
        } else if seen.insert(u.clone()) {
            out.push(u.clone());
            via.push(None);
        }
    }
    for (i, t) in teams.iter().enumerate() {
        match dir.teams.get(t) {
            None => errors.push(
                format!("{path}.{teams_key}[{i}]"),
                format!("unknown team {t:?}"),
            ),
            Some(team) => {
                for m in &team.members {
                    if seen.insert(m.clone()) {
                        out.push(m.clone());
                        via.push(Some(t.clone()));
                    }
                }
            }
        }
    }
    (out, via)
}

pub(super) fn compile_assign(
    raw: &RawAssign,
    dir: &Directory,
    path: &str,
    errors: &mut Errors,
) -> Assign {
    let (candidates_, via_team) =
        candidates(&raw.users, &raw.teams, dir, path, "users", "teams", errors);
    let (fallback, fallback_via_team) = candidates(
        &raw.fallback_users,
        &raw.fallback_teams,
        dir,
        path,
        "fallback_users",
        "fallback_teams",
        errors,
    );
    let strategy = match raw.strategy.as_deref() {
        None | Some("round_robin") => Strategy::RoundRobin,
        Some("least_open") => Strategy::LeastOpen,
        Some(other) => {
            errors.push(
                format!("{path}.strategy"),
                format!("unknown strategy {other:?} (round_robin or least_open)"),
            );
            Strategy::RoundRobin
        }
    };
    if candidates_.is_empty() && !raw.owner && raw.users.is_empty() && raw.teams.is_empty() {
        errors.push(
            path.to_string(),
            "assign needs users, teams or owner = true",
        );
    }
    Assign {
        candidates: candidates_,
        via_team,
        strategy,
        owner: raw.owner,
        fallback,
        fallback_via_team,
    }
}

/// Whether a rule's `match` takes every message (its own errors are reported elsewhere).
pub(super) fn is_catch_all(raw: &RawMatch) -> bool {
    compile_match(raw, "", &mut Errors::default()).is_catch_all()
}

fn compile_match(raw: &RawMatch, path: &str, errors: &mut Errors) -> Match {
    let choice = |errors: &mut Errors, key: &str, v: &Option<String>, allowed: &[&str]| {
        let v = v.as_ref().map(|s| s.trim().to_lowercase());
        if let Some(s) = &v {
            if !allowed.contains(&s.as_str()) {
                errors.push(
                    format!("{path}.match.{key}"),
                    format!("{s:?} is not one of {}", allowed.join(", ")),
                );
            }
        }
        v
    };
    Match {
        from: lower(&raw.from),
        from_domain: raw
            .from_domain
            .iter()
            .map(|d| d.trim().trim_start_matches('@').to_lowercase())
            .collect(),
        subject: lower(&raw.subject),
        recipient: lower(&raw.recipient),
        tag: lower(&raw.tag),
        header: raw
            .header
            .iter()
            .map(|h| HeaderMatch {
                name: h.name.trim().to_lowercase(),
                contains: h.contains.as_ref().map(|c| c.to_lowercase()),
            })
            .collect(),
        has_attachment: raw.has_attachment,
        attachment_name: lower(&raw.attachment_name),
        auth: choice(errors, "auth", &raw.auth, &["accept", "quarantine"]),
        dmarc: choice(errors, "dmarc", &raw.dmarc, &["pass", "fail", "none"]),
    }
}

pub(super) fn compile_rules(
    raw: &[RawRule],
    dir: &Directory,
    inbox_path: &str,
    errors: &mut Errors,
) -> Vec<Rule> {
    let mut rules: Vec<Rule> = Vec::new();
    let mut catch_all: Option<String> = None;
    for (i, r) in raw.iter().enumerate() {
        let path = format!("{inbox_path}.rule[{i}]");
        let when = compile_match(&r.when, &path, errors);
        if let Some(first) = &catch_all {
            errors.push(
                path.clone(),
                format!("unreachable: {first} matches every message and comes first"),
            );
        }
        if when.is_catch_all() && catch_all.is_none() {
            catch_all = Some(path.clone());
        }
        let assign = r
            .assign
            .as_ref()
            .map(|a| compile_assign(a, dir, &format!("{path}.assign"), errors));
        let ticket = r.ticket.as_ref().map(|t| TicketOverride {
            enabled: t.enabled,
            pipeline: t.pipeline.clone(),
            stage: t.stage.clone(),
            priority: t.priority.clone(),
        });
        let name = r.name.clone().unwrap_or_else(|| format!("rule[{i}]"));
        if rules.iter().any(|x| x.name == name) {
            errors.push(
                format!("{path}.name"),
                format!("duplicate rule name {name:?}"),
            );
        }
        rules.push(Rule {
            name,
            when,
            assign,
            ticket,
        });
    }
    rules
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    #[test]
    fn routing_references_and_reachability_are_checked() {
        let text = r#"
            [[listener]]
            addr = "127.0.0.1:0"
            [[user]]
            id = "alice"
            [[team]]
            id = "t1"
            members = ["alice", "ghost"]
            [[contact]]
            domain = "bigcorp.example"
            owner = "nobody"
            [[inbox]]
            id = "a"
            address = "a@x.example"
            from_name = "ACME Support"
            [[inbox.rule]]
            name = "all"
            assign = { users = ["alice"] }
            [[inbox.rule]]
            name = "never"
            match.subject = ["x"]
            assign = { users = ["bob"], teams = ["t9"], strategy = "random" }
            [[inbox]]
            id = "b"
            address = "b@x.example"
            from_name = "acme support"
        "#;
        let errs = parse(text).unwrap_err().0;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "team[0].members[1]",
            "contact[0].owner",
            "inbox[0].rule[1]",
            "inbox[0].rule[1].assign.users[0]",
            "inbox[0].rule[1].assign.teams[0]",
            "inbox[0].rule[1].assign.strategy",
            "inbox[1].from_name",
        ] {
            assert!(paths.contains(&want), "missing {want} in {errs:#?}");
        }
        assert!(
            errs.iter().any(|e| e.message.contains("unreachable")),
            "{errs:#?}"
        );
    }
}
