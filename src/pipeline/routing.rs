//! Parsed message + attribution + auth verdict -> the inbox rule that applies (`select`), and,
//! inside the commit, rule -> assignee (`choose`): round robin or least open conversations among
//! available users, or the contact's owner with a fallback. Rules are ordered; the first whose
//! conditions all hold decides; no match leaves the conversation unassigned.

use crate::config::routes::{Assign, Directory, Match, Rule, Strategy};
use crate::config::InboxConfig;
use crate::store::{Tx, TxResult};

/// What rules can look at.
pub struct Facts<'a> {
    /// The attributed original sender, lower case.
    pub from: &'a str,
    pub subject: &'a str,
    /// The recipient address as sent, lower case, and its `+tag`.
    pub recipient: &'a str,
    pub tag: Option<&'a str>,
    /// Lower-case names, raw values.
    pub headers: &'a [(String, String)],
    pub attachment_names: &'a [String],
    /// "accept" or "quarantine".
    pub auth_verdict: &'a str,
    /// "pass", "fail", "none".
    pub dmarc: &'a str,
}

fn any_contains(haystack: &str, needles: &[String]) -> bool {
    needles.is_empty() || {
        let h = haystack.to_lowercase();
        needles.iter().any(|n| h.contains(n.as_str()))
    }
}

fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
}

/// Whether every condition of `m` holds for `f`.
pub fn matches(m: &Match, f: &Facts<'_>) -> bool {
    let from_domain = domain_of(f.from);
    (m.from.is_empty() || m.from.iter().any(|a| a == f.from))
        && (m.from_domain.is_empty()
            || m.from_domain
                .iter()
                .any(|d| crate::util::domain_within(from_domain, d)))
        && any_contains(f.subject, &m.subject)
        && (m.recipient.is_empty() || m.recipient.iter().any(|r| r == f.recipient))
        && (m.tag.is_empty()
            || f.tag
                .is_some_and(|t| m.tag.iter().any(|x| x.eq_ignore_ascii_case(t))))
        && m.header.iter().all(|h| {
            f.headers.iter().any(|(name, value)| {
                *name == h.name
                    && h.contains
                        .as_ref()
                        .is_none_or(|c| value.to_lowercase().contains(c.as_str()))
            })
        })
        && m.has_attachment
            .is_none_or(|want| want != f.attachment_names.is_empty())
        && (m.attachment_name.is_empty()
            || f.attachment_names
                .iter()
                .any(|n| any_contains(n, &m.attachment_name)))
        && m.auth.as_deref().is_none_or(|a| a == f.auth_verdict)
        && m.dmarc.as_deref().is_none_or(|d| d == f.dmarc)
}

/// The first rule of `inbox` that matches.
pub fn select<'a>(inbox: &'a InboxConfig, facts: &Facts<'_>) -> Option<&'a Rule> {
    inbox.rules.iter().find(|r| matches(&r.when, facts))
}

/// Availability of a user now: a runtime override (set through the API) wins over config.
pub fn available(tx: &Tx<'_>, dir: &Directory, user: &str) -> TxResult<bool> {
    if let Some(a) = tx.user_state(user)?.and_then(|st| st.available) {
        return Ok(a);
    }
    Ok(dir.users.get(user).is_some_and(|u| u.available))
}

/// Pick among `candidates` by `strategy`, skipping unavailable users. `rr` names the round
/// robin position. Returns the index chosen.
fn pick(
    tx: &Tx<'_>,
    dir: &Directory,
    candidates: &[String],
    strategy: Strategy,
    rr: &str,
) -> TxResult<Option<usize>> {
    let n = candidates.len();
    if n == 0 {
        return Ok(None);
    }
    match strategy {
        Strategy::RoundRobin => {
            let start = tx.round_robin_position(rr)?.rem_euclid(n as i64) as usize;
            for step in 0..n {
                let i = (start + step) % n;
                if available(tx, dir, &candidates[i])? {
                    tx.set_round_robin_position(rr, (i + 1) as i64)?;
                    return Ok(Some(i));
                }
            }
            Ok(None)
        }
        Strategy::LeastOpen => {
            let mut best: Option<(i64, usize)> = None;
            for (i, u) in candidates.iter().enumerate() {
                if !available(tx, dir, u)? {
                    continue;
                }
                let open = tx.open_count(u)?;
                if best.is_none_or(|(b, _)| open < b) {
                    best = Some((open, i));
                }
            }
            Ok(best.map(|(_, i)| i))
        }
    }
}

/// The assignee chosen for a new or unassigned conversation: (user, team, how).
pub fn choose(
    tx: &Tx<'_>,
    dir: &Directory,
    assign: &Assign,
    owner: Option<&str>,
    rr: &str,
) -> TxResult<Option<(String, Option<String>, &'static str)>> {
    let strategy_name = match assign.strategy {
        Strategy::RoundRobin => "round_robin",
        Strategy::LeastOpen => "least_open",
    };
    if assign.owner {
        if let Some(o) = owner {
            if available(tx, dir, o)? {
                return Ok(Some((o.to_string(), None, "owner")));
            }
        }
        // The owner is unknown or away: the fallback list, else the rule's own candidates.
        let fallback = format!("{rr}:fallback");
        if let Some(i) = pick(tx, dir, &assign.fallback, assign.strategy, &fallback)? {
            return Ok(Some((
                assign.fallback[i].clone(),
                assign.fallback_via_team[i].clone(),
                "owner_fallback",
            )));
        }
        if let Some(i) = pick(tx, dir, &assign.candidates, assign.strategy, rr)? {
            return Ok(Some((
                assign.candidates[i].clone(),
                assign.via_team[i].clone(),
                "owner_fallback",
            )));
        }
        return Ok(None);
    }
    Ok(
        pick(tx, dir, &assign.candidates, assign.strategy, rr)?.map(|i| {
            (
                assign.candidates[i].clone(),
                assign.via_team[i].clone(),
                strategy_name,
            )
        }),
    )
}
