//! `bulkhead-policy`: the qrexec policy language of Qubes R4.1+.
//!
//! [`parse`] turns `*.policy` files (with `!include`, `!include-dir` and
//! `!include-service`) into an ordered rule list; [`Policy::decide`] finds the
//! first rule matching a call and resolves its action against a snapshot of
//! the system ([`System`]). No I/O of its own: files come through the
//! [`Files`] trait. Semantics: `shared/reference/qubes-compat.md` §5.5.
//!
//! The service, argument, source and target of a request come (indirectly)
//! from qubes, so matching never trusts them: unknown targets become
//! `@default` so a qube cannot probe which qubes exist.
#![forbid(unsafe_code)]

mod eval;
mod parse;
mod token;

pub use eval::{Decision, Domain, Request, System};
pub use parse::{load_dirs, parse, Files, OsFiles};
pub use token::Token;

use std::collections::HashMap;

use thiserror::Error;

/// Where a rule came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A policy that cannot be used: everything is denied until it is fixed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{file}:{line}: {message}")]
pub struct PolicyError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// `ARGUMENT` column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgSpec {
    /// `*`
    Any,
    /// `+` or `+ARG` (stored with the `+`).
    Exact(String),
}

/// What a matching rule does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Deny {
        notify: bool,
    },
    Allow {
        target: Option<Token>,
        user: Option<String>,
        notify: bool,
        autostart: bool,
    },
    Ask {
        target: Option<Token>,
        default_target: Option<Token>,
        user: Option<String>,
        notify: bool,
        autostart: bool,
    },
}

/// One policy line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `None` is `*`.
    pub service: Option<String>,
    pub argument: ArgSpec,
    pub source: Token,
    pub target: Token,
    pub action: Action,
    pub location: Location,
}

/// An ordered rule list, indexed by service and argument for fast first-match lookup.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<Rule>,
    /// Rules for (service, exact argument), by rule index.
    by_service_arg: HashMap<(String, String), Vec<usize>>,
    /// Rules for a service with argument `*`.
    by_service: HashMap<String, Vec<usize>>,
    /// Rules for service `*`.
    wildcard: Vec<usize>,
}

impl Policy {
    /// Builds the index over rules in file order.
    pub fn new(rules: Vec<Rule>) -> Policy {
        let mut p = Policy {
            rules: Vec::new(),
            ..Default::default()
        };
        for (i, r) in rules.iter().enumerate() {
            match (&r.service, &r.argument) {
                (Some(s), ArgSpec::Exact(a)) => p
                    .by_service_arg
                    .entry((s.clone(), a.clone()))
                    .or_default()
                    .push(i),
                (Some(s), ArgSpec::Any) => p.by_service.entry(s.clone()).or_default().push(i),
                (None, _) => p.wildcard.push(i),
            }
        }
        p.rules = rules;
        p
    }

    /// All rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Rules that can apply to `service`+`argument`, in file order: a merge of
    /// three sorted index lists.
    fn candidates<'a>(
        &'a self,
        service: &str,
        argument: &str,
    ) -> impl Iterator<Item = &'a Rule> + 'a {
        let none: &[usize] = &[];
        let exact = self
            .by_service_arg
            .get(&(service.to_string(), argument.to_string()))
            .map(Vec::as_slice)
            .unwrap_or(none);
        let any_arg = self
            .by_service
            .get(service)
            .map(Vec::as_slice)
            .unwrap_or(none);
        let mut lists = [exact, any_arg, self.wildcard.as_slice()];
        std::iter::from_fn(move || {
            let (k, _) = lists
                .iter()
                .enumerate()
                .filter_map(|(k, l)| l.first().map(|i| (k, *i)))
                .min_by_key(|(_, i)| *i)?;
            let i = lists[k][0];
            lists[k] = &lists[k][1..];
            Some(&self.rules[i])
        })
    }
}

#[cfg(test)]
mod tests;
