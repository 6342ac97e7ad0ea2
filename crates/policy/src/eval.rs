//! First-match evaluation of a call against the policy and the system state.

use std::collections::HashMap;

use crate::token::Token;
use crate::{Action, ArgSpec, Location, Policy, Rule};

/// What the evaluator needs to know about one qube.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Domain {
    pub name: String,
    /// `AdminVM`, `AppVM`, `TemplateVM`, `StandaloneVM` or `DispVM`.
    pub class: String,
    pub tags: Vec<String>,
    pub template_for_dispvms: bool,
    pub default_dispvm: Option<String>,
    /// For DispVMs: the disposable template they came from.
    pub template: Option<String>,
    pub running: bool,
    pub uuid: String,
}

/// A snapshot of every qube, dom0 included (by name).
#[derive(Debug, Clone, Default)]
pub struct System {
    pub domains: HashMap<String, Domain>,
}

/// One call to decide. All fields come from a qube and are untrusted.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub service: &'a str,
    /// `+` for no argument, else `+ARG`.
    pub argument: &'a str,
    /// Set by the host, never by the caller.
    pub source: &'a str,
    /// As the caller asked: a name, `uuid:…`, `@default`, `@adminvm`,
    /// `@dispvm` or `@dispvm:NAME` (empty means `@default`).
    pub target: &'a str,
}

/// The outcome, with the rule that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Run it. `target` is a qube name, `dom0`, or `@dispvm:TEMPLATE`.
    Allow {
        target: String,
        user: Option<String>,
        autostart: bool,
        notify: bool,
        rule: Location,
    },
    /// Ask the user to pick one of `choices` (same forms as Allow's target).
    Ask {
        choices: Vec<String>,
        default_target: Option<String>,
        user: Option<String>,
        autostart: bool,
        notify: bool,
        rule: Location,
    },
    /// Refuse; `rule` is None when nothing matched.
    Deny {
        reason: String,
        notify: bool,
        rule: Option<Location>,
    },
}

/// A request's target after normalization.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Default,
    AdminVm,
    DispVm,
    DispVmOf(String),
    Vm(String),
}

const DOM0: &str = "dom0";

impl System {
    fn get(&self, name: &str) -> Option<&Domain> {
        self.domains.get(name)
    }

    fn by_uuid(&self, uuid: &str) -> Option<&Domain> {
        self.domains
            .values()
            .find(|d| d.uuid.eq_ignore_ascii_case(uuid))
    }

    fn named(&self, name: &str) -> Value {
        match self.get(name) {
            Some(d) if d.class == "AdminVM" => Value::AdminVm,
            Some(_) => Value::Vm(name.to_string()),
            None => Value::Default,
        }
    }

    /// Unknown qubes become `@default`, so callers cannot probe for names.
    fn normalize(&self, target: &str) -> Value {
        match target {
            "" | "@default" => Value::Default,
            "@adminvm" | DOM0 => Value::AdminVm,
            "@dispvm" => Value::DispVm,
            t => {
                if let Some(x) = t.strip_prefix("@dispvm:") {
                    match self.get(x) {
                        Some(_) => Value::DispVmOf(x.to_string()),
                        None => Value::Default,
                    }
                } else if let Some(u) = t.strip_prefix("uuid:") {
                    match self.by_uuid(u) {
                        Some(d) => self.named(&d.name.clone()),
                        None => Value::Default,
                    }
                } else if t.starts_with('@') {
                    Value::Default
                } else {
                    self.named(t)
                }
            }
        }
    }

    fn domain_of(&self, v: &Value) -> Option<&Domain> {
        match v {
            Value::Vm(n) => self.get(n),
            Value::AdminVm => self
                .get(DOM0)
                .or_else(|| self.domains.values().find(|d| d.class == "AdminVM")),
            _ => None,
        }
    }

    fn has_tag(&self, name: &str, tag: &str) -> bool {
        self.get(name)
            .is_some_and(|d| d.tags.iter().any(|t| t == tag))
    }
}

fn matches(tok: &Token, v: &Value, sys: &System, src: &Domain, is_source: bool) -> bool {
    match tok {
        Token::Any => true,
        // As in Qubes, @anyvm also matches a call that named no target, so
        // `ask` rules work for `qvm-copy` (which sends @default).
        Token::AnyVm => matches!(
            v,
            Value::Vm(_) | Value::DispVm | Value::DispVmOf(_) | Value::Default
        ),
        Token::AdminVm => *v == Value::AdminVm,
        Token::Default => *v == Value::Default,
        Token::DispVm => *v == Value::DispVm,
        Token::DispVmOf(x) => {
            if is_source {
                sys.domain_of(v)
                    .is_some_and(|d| d.class == "DispVM" && d.template.as_deref() == Some(x))
            } else {
                match v {
                    Value::DispVmOf(y) => x == y,
                    Value::DispVm => src.default_dispvm.as_deref() == Some(x),
                    _ => false,
                }
            }
        }
        Token::DispVmTag(t) => {
            if is_source {
                sys.domain_of(v).is_some_and(|d| {
                    d.class == "DispVM"
                        && d.template.as_deref().is_some_and(|tpl| sys.has_tag(tpl, t))
                })
            } else {
                let tpl = match v {
                    Value::DispVmOf(y) => Some(y.as_str()),
                    Value::DispVm => src.default_dispvm.as_deref(),
                    _ => None,
                };
                tpl.is_some_and(|y| {
                    sys.has_tag(y, t) && sys.get(y).is_some_and(|d| d.template_for_dispvms)
                })
            }
        }
        Token::Tag(t) => sys
            .domain_of(v)
            .is_some_and(|d| d.tags.iter().any(|x| x == t)),
        Token::Type(c) => sys.domain_of(v).is_some_and(|d| &d.class == c),
        Token::Name(n) => *v == Value::Vm(n.clone()),
        Token::Uuid(u) => sys
            .domain_of(v)
            .is_some_and(|d| d.uuid.eq_ignore_ascii_case(u)),
    }
}

fn arg_matches(spec: &ArgSpec, arg: &str) -> bool {
    match spec {
        ArgSpec::Any => true,
        ArgSpec::Exact(a) => a == arg,
    }
}

fn deny(reason: impl Into<String>, notify: bool, rule: Option<&Rule>) -> Decision {
    Decision::Deny {
        reason: reason.into(),
        notify,
        rule: rule.map(|r| r.location.clone()),
    }
}

impl Policy {
    fn first_match(
        &self,
        sys: &System,
        req: &Request<'_>,
        src: &Domain,
        src_v: &Value,
        target: &Value,
    ) -> Option<&Rule> {
        self.candidates(req.service, req.argument).find(|r| {
            arg_matches(&r.argument, req.argument)
                && matches(&r.source, src_v, sys, src, true)
                && matches(&r.target, target, sys, src, false)
        })
    }

    /// Decides one call: the first matching rule wins; no match denies.
    pub fn decide(&self, sys: &System, req: &Request<'_>) -> Decision {
        let Some(src) = sys.get(req.source) else {
            return deny(format!("unknown source {:?}", req.source), true, None);
        };
        let src_v = if src.class == "AdminVM" {
            Value::AdminVm
        } else {
            Value::Vm(src.name.clone())
        };
        let target = sys.normalize(req.target);
        let Some(rule) = self.first_match(sys, req, src, &src_v, &target) else {
            return deny("no matching rule found", true, None);
        };
        match &rule.action {
            Action::Deny { notify } => deny("denied by policy", *notify, Some(rule)),
            Action::Allow {
                target: t,
                user,
                notify,
                autostart,
            } => {
                let wanted = match t {
                    Some(tok) => match param_value(sys, tok) {
                        Some(v) => v,
                        None => {
                            return deny(
                                "the rule's target= names a qube that does not exist",
                                true,
                                Some(rule),
                            )
                        }
                    },
                    None => target,
                };
                match resolve(sys, src, &wanted, *autostart) {
                    Ok(target) => Decision::Allow {
                        target,
                        user: user.clone(),
                        autostart: *autostart,
                        notify: *notify,
                        rule: rule.location.clone(),
                    },
                    Err(why) => deny(why, true, Some(rule)),
                }
            }
            Action::Ask {
                target: t,
                default_target,
                user,
                notify,
                autostart,
            } => {
                let choices: Vec<String> = match t {
                    Some(tok) => param_value(sys, tok)
                        .and_then(|v| resolve(sys, src, &v, *autostart).ok())
                        .into_iter()
                        .collect(),
                    None => self.ask_choices(sys, req, src, &src_v, *autostart),
                };
                if choices.is_empty() {
                    return deny("no qube the user could choose", true, Some(rule));
                }
                let default_target = default_target
                    .as_ref()
                    .and_then(|tok| param_value(sys, tok))
                    .and_then(|v| resolve(sys, src, &v, *autostart).ok())
                    .filter(|d| choices.contains(d));
                Decision::Ask {
                    choices,
                    default_target,
                    user: user.clone(),
                    autostart: *autostart,
                    notify: *notify,
                    rule: rule.location.clone(),
                }
            }
        }
    }

    /// Every target that some allow/ask rule would accept for this call.
    fn ask_choices(
        &self,
        sys: &System,
        req: &Request<'_>,
        src: &Domain,
        src_v: &Value,
        autostart: bool,
    ) -> Vec<String> {
        let mut names: Vec<&String> = sys.domains.keys().collect();
        names.sort();
        let mut out = Vec::new();
        for n in names {
            let d = &sys.domains[n];
            let mut candidates = vec![sys.named(n)];
            if d.template_for_dispvms {
                candidates.push(Value::DispVmOf(n.clone()));
            }
            for v in candidates {
                let ok = matches!(
                    self.first_match(sys, req, src, src_v, &v)
                        .map(|r| &r.action),
                    Some(Action::Allow { .. } | Action::Ask { .. })
                );
                if ok {
                    if let Ok(t) = resolve(sys, src, &v, autostart) {
                        if !out.contains(&t) {
                            out.push(t);
                        }
                    }
                }
            }
        }
        out
    }
}

fn param_value(sys: &System, tok: &Token) -> Option<Value> {
    match tok {
        Token::Name(n) => match sys.named(n) {
            Value::Default => None,
            v => Some(v),
        },
        Token::Uuid(u) => sys.by_uuid(u).map(|d| sys.named(&d.name)),
        Token::AdminVm => Some(Value::AdminVm),
        Token::DispVm => Some(Value::DispVm),
        Token::DispVmOf(x) => sys.get(x).map(|_| Value::DispVmOf(x.clone())),
        _ => None,
    }
}

/// Turns an allowed target into something executable, or says why not.
fn resolve(sys: &System, src: &Domain, v: &Value, autostart: bool) -> Result<String, String> {
    let target = match v {
        Value::Default => return Err("no target given and the rule names none".into()),
        Value::DispVm => match &src.default_dispvm {
            Some(x) => return resolve(sys, src, &Value::DispVmOf(x.clone()), autostart),
            None => return Err(format!("{} has no default_dispvm", src.name)),
        },
        Value::DispVmOf(x) => {
            if !sys.get(x).is_some_and(|d| d.template_for_dispvms) {
                return Err(format!("{x} is not a disposable template"));
            }
            if !autostart {
                return Err("a disposable cannot be used with autostart=no".into());
            }
            return Ok(format!("@dispvm:{x}"));
        }
        Value::AdminVm => DOM0.to_string(),
        Value::Vm(n) => {
            if !autostart && !sys.get(n).is_some_and(|d| d.running) {
                return Err(format!("{n} is not running and the rule says autostart=no"));
            }
            n.clone()
        }
    };
    if target == src.name {
        return Err("source and target are the same qube".into());
    }
    Ok(target)
}
