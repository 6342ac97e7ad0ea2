//! Whole-state reference rules: every VM reference points at an existing qube
//! of the right kind, netvm chains have no loops, and nothing referenced can be
//! removed. Checked after every change, on the candidate state, before it is
//! persisted, so no sequence of individually valid calls can break the graph.

use std::collections::BTreeSet;

use super::props::{self, Holder, PropType};
use super::{App, Class, DOM0};
use crate::error::{ApiError, ApiResult};

const MAX_NET_CHAIN: usize = 64;

/// Checks every reference in the state; the error names the qube and property.
pub fn check_consistency(app: &App) -> ApiResult<()> {
    for q in app.qubes.values() {
        if q.class.has_template() {
            let Some(t) = q.props.get("template").and_then(|v| v.as_vm()) else {
                return Err(ApiError::value(format!(
                    "qube '{}' has no template",
                    q.name
                )));
            };
            let tq = app.vm(t).map_err(|_| {
                ApiError::value(format!(
                    "template '{t}' of qube '{}' does not exist",
                    q.name
                ))
            })?;
            let ok = match q.class {
                Class::DispVM => tq.class == Class::AppVM && is_dvm_template(app, t),
                _ => tq.class == Class::TemplateVM,
            };
            if !ok {
                return Err(ApiError::value(format!(
                    "template '{t}' of qube '{}' is not of a usable kind",
                    q.name
                )));
            }
        }
        for d in props::list(app, Holder::Vm(&q.name))? {
            if d.ty != PropType::Vm || d.name == "template" {
                continue;
            }
            let Some(target) = props::vm_ref(app, &q.name, d.name) else {
                continue;
            };
            check_target(
                app,
                &format!("{} of qube '{}'", d.name, q.name),
                d.name,
                &target,
            )?;
        }
        check_net_chain(app, &q.name)?;
    }
    for d in props::list(app, Holder::Global)? {
        if d.ty != PropType::Vm {
            continue;
        }
        if let Some(target) = props::value(app, Holder::Global, d.name)?.as_vm() {
            check_target(app, &format!("global {}", d.name), d.name, target)?;
            if d.name == "default_template" && app.vm(target)?.class != Class::TemplateVM {
                return Err(ApiError::value(format!(
                    "global default_template '{target}' is not a TemplateVM"
                )));
            }
        }
    }
    Ok(())
}

fn is_dvm_template(app: &App, name: &str) -> bool {
    props::value(app, Holder::Vm(name), "template_for_dispvms").is_ok_and(|v| v.as_bool())
}

fn provides_network(app: &App, name: &str) -> bool {
    props::value(app, Holder::Vm(name), "provides_network").is_ok_and(|v| v.as_bool())
}

fn check_target(app: &App, what: &str, prop: &str, target: &str) -> ApiResult<()> {
    if app.vm(target).is_err() {
        return Err(ApiError::value(format!(
            "{what} points at '{target}', which does not exist"
        )));
    }
    match prop {
        "netvm" | "default_netvm" if !provides_network(app, target) => Err(ApiError::value(format!(
            "{what} is '{target}', which would no longer provide network; disconnect it first"
        ))),
        "default_dispvm" | "management_dispvm" if !is_dvm_template(app, target) => {
            Err(ApiError::value(format!(
                "{what} is '{target}', which would no longer be a disposable template; change that first"
            )))
        }
        _ => Ok(()),
    }
}

fn check_net_chain(app: &App, start: &str) -> ApiResult<()> {
    let mut seen = BTreeSet::new();
    let mut cur = start.to_string();
    seen.insert(cur.clone());
    for _ in 0..MAX_NET_CHAIN {
        let Some(next) = props::vm_ref(app, &cur, "netvm") else {
            return Ok(());
        };
        if !seen.insert(next.clone()) {
            return Err(ApiError::value(format!(
                "netvm loop: '{start}' would reach itself through '{next}'; choose another netvm"
            )));
        }
        cur = next;
    }
    Err(ApiError::value(format!(
        "netvm chain of '{start}' is longer than {MAX_NET_CHAIN}"
    )))
}

/// Everything that refers to qube `name`: `"<prop> of '<qube>'"` or
/// `"global <prop>"`, sorted.
pub fn referrers(app: &App, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for q in app.qubes.values() {
        if q.name == name {
            continue;
        }
        let Ok(defs) = props::list(app, Holder::Vm(&q.name)) else {
            continue;
        };
        for d in defs {
            if d.ty == PropType::Vm && props::vm_ref(app, &q.name, d.name).as_deref() == Some(name)
            {
                out.push(format!("{} of '{}'", d.name, q.name));
            }
        }
    }
    if let Ok(defs) = props::list(app, Holder::Global) {
        for d in defs {
            if d.ty != PropType::Vm {
                continue;
            }
            let v = props::value(app, Holder::Global, d.name);
            if v.ok().as_ref().and_then(|v| v.as_vm()) == Some(name) && name != DOM0 {
                out.push(format!("global {}", d.name));
            }
        }
    }
    out.sort();
    out
}
