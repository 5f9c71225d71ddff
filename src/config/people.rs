//! Users and teams created through the API, compiled together with the file's `[[user]]`,
//! `[[team]]` and `[[contact]]` tables into one directory by the file's own checks
//! (`routes::compile_directory`, the same messages, the API's at `/v1/users/<id>` and
//! `/v1/teams/<id>`), and every inbox (the file's and the API's) compiled again against it: a
//! user or team that an inbox, a team or a contact still names cannot go away.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::errors::Errors;
use super::inboxes::Blame;
use super::raw::{RawContact, RawInbox, RawTeam, RawUser};
use super::{routes, Config, ConfigErrors};

/// The file's people tables as read, with their key paths (`user[0]`, `team[1]`, ...).
#[derive(Debug, Clone, Default)]
pub struct FilePeople {
    pub users: Vec<(String, RawUser)>,
    pub teams: Vec<(String, RawTeam)>,
    pub contacts: Vec<(String, RawContact)>,
}

/// The users and teams created through the API, as they are stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ApiPeople {
    pub users: Vec<RawUser>,
    pub teams: Vec<RawTeam>,
}

/// A user or a team as the API keeps it: what the generic create, change and delete of
/// `actions::people` and the store's definitions need to know of each.
pub trait Person: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// "user" or "team": the event prefix, the store's key prefix, the word in messages.
    const KIND: &'static str;
    fn id(&self) -> &str;
    /// Where one created through the API appears in error paths: where to change it.
    fn api_path(id: &str) -> String;
    /// The API's list of this kind.
    fn list(people: &mut ApiPeople) -> &mut Vec<Self>;
    /// The file's table defining `id`, if the file defines it.
    fn file_path<'a>(config: &'a Config, id: &str) -> Option<&'a str>;
}

impl Person for RawUser {
    const KIND: &'static str = "user";
    fn id(&self) -> &str {
        &self.id
    }
    fn api_path(id: &str) -> String {
        format!("/v1/users/{id}")
    }
    fn list(people: &mut ApiPeople) -> &mut Vec<Self> {
        &mut people.users
    }
    fn file_path<'a>(config: &'a Config, id: &str) -> Option<&'a str> {
        let users = &config.file_people.users;
        users
            .iter()
            .find(|(_, u)| u.id == id)
            .map(|(p, _)| p.as_str())
    }
}

impl Person for RawTeam {
    const KIND: &'static str = "team";
    fn id(&self) -> &str {
        &self.id
    }
    fn api_path(id: &str) -> String {
        format!("/v1/teams/{id}")
    }
    fn list(people: &mut ApiPeople) -> &mut Vec<Self> {
        &mut people.teams
    }
    fn file_path<'a>(config: &'a Config, id: &str) -> Option<&'a str> {
        let teams = &config.file_people.teams;
        teams
            .iter()
            .find(|(_, t)| t.id == id)
            .map(|(p, _)| p.as_str())
    }
}

/// `list` at the key paths of the API.
fn at_api_paths<T: Person>(list: &[T]) -> Vec<(String, T)> {
    list.iter()
        .map(|x| (T::api_path(x.id()), x.clone()))
        .collect()
}

/// `first` then `second`.
fn chained<T: Clone>(first: &[(String, T)], second: &[(String, T)]) -> Vec<(String, T)> {
    first.iter().chain(second).cloned().collect()
}

impl Config {
    /// This config with the users and teams (`people`) and inboxes (`inboxes`) created through
    /// the API compiled together with the file's, checked as one: ids unique across both, every
    /// reference (team members, contact owners, inbox rules, auto-assignment, admins) to a user
    /// or team that exists. `blame` says whose key a clash names (`Blame::File` at start,
    /// reload and `check-config`; `Blame::Last` for an API change, whose item is last).
    pub fn with_api_definitions(
        &self,
        people: &ApiPeople,
        inboxes: &[RawInbox],
        blame: Blame,
    ) -> Result<Config, ConfigErrors> {
        let file = &self.file_people;
        let (api_users, api_teams) = (at_api_paths(&people.users), at_api_paths(&people.teams));
        let (users, teams) = match blame {
            Blame::Last => (
                chained(&file.users, &api_users),
                chained(&file.teams, &api_teams),
            ),
            Blame::File => (
                chained(&api_users, &file.users),
                chained(&api_teams, &file.teams),
            ),
        };
        let mut errors = Errors::default();
        let directory = routes::compile_directory(&users, &teams, &file.contacts, &mut errors);
        let mut base = self.clone();
        base.directory = directory;
        base.api_people = people.clone();
        match base.with_api_inboxes(inboxes, blame) {
            Ok(out) if errors.0.is_empty() => Ok(out),
            Ok(_) => Err(ConfigErrors(errors.0)),
            Err(more) => {
                errors.0.extend(more.0);
                Err(ConfigErrors(errors.0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn file() -> Config {
        parse(
            r#"
            [[listener]]
            addr = "127.0.0.1:0"
            [[user]]
            id = "alice"
            email = "alice@acme.example"
            [[team]]
            id = "desk"
            members = ["alice"]
            [[inbox]]
            id = "a"
            address = "a@x.example"
            auto_assign = { teams = ["desk"] }
            "#,
        )
        .unwrap()
    }

    fn user(id: &str, email: Option<&str>) -> RawUser {
        RawUser {
            id: id.into(),
            name: None,
            email: email.map(Into::into),
            available: None,
        }
    }

    #[test]
    fn api_people_are_checked_with_the_files_and_clashes_name_both() {
        let c = file();
        let people = ApiPeople {
            users: vec![user("bob", Some("bob@acme.example"))],
            teams: vec![RawTeam {
                id: "night".into(),
                name: None,
                members: vec!["alice".into(), "bob".into()],
            }],
        };
        let merged = c
            .with_api_definitions(&people, &[], Blame::Last)
            .expect("valid");
        assert_eq!(merged.directory.users.len(), 2);
        assert_eq!(
            merged.directory.teams["night"].source,
            crate::config::inboxes::InboxSource::Api
        );

        let clash = ApiPeople {
            users: vec![user("alice", None), user("bad id", Some("not an address"))],
            teams: vec![],
        };
        let errs = c
            .with_api_definitions(&clash, &[], Blame::File)
            .unwrap_err()
            .0;
        let got: Vec<(&str, &str)> = errs
            .iter()
            .map(|e| (e.path.as_str(), e.message.as_str()))
            .collect();
        assert!(
            got.contains(&(
                "user[0].id",
                "duplicate user id \"alice\" (also /v1/users/alice)"
            )),
            "{got:?}"
        );
        assert!(
            got.iter().any(|(p, _)| *p == "/v1/users/bad id.id"),
            "{got:?}"
        );
        assert!(
            got.iter().any(|(p, _)| *p == "/v1/users/bad id.email"),
            "{got:?}"
        );
    }
}
