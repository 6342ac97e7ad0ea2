//! Executing decoded calls. Reads take `&App`; writes take a candidate
//! `&mut App` that the caller persists and publishes only if the call and the
//! whole-state consistency check both succeed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use bulkhead_proto::admin::Event;
use uuid::Uuid;

use super::{Call, Chain, CreateArgs, Ctx, Target};
use crate::error::{ApiError, ApiResult, Exc};
use crate::model::props::{self, Holder};
use crate::model::{
    check_consistency, referrers, App, Class, PowerState, Qube, Value, DOM0, MAX_DEFAULT_LABEL,
};

fn holder<'a>(t: &Target, ctx: &'a Ctx) -> Holder<'a> {
    match t {
        Target::Global => Holder::Global,
        Target::Vm => Holder::Vm(&ctx.dest),
    }
}

/// Answers a read-only call.
pub fn query(app: &App, ctx: &Ctx, call: &Call) -> ApiResult<String> {
    let q = app.vm(&ctx.dest)?;
    Ok(match call {
        Call::VmClassList => Class::ALL
            .iter()
            .map(|c| format!("{}\n", c.name()))
            .collect(),
        Call::VmList => {
            let line = |q: &Qube| {
                format!(
                    "{} class={} state={} uuid={}\n",
                    q.name,
                    q.class.name(),
                    q.power.name(),
                    q.uuid
                )
            };
            if q.class == Class::AdminVM {
                app.qubes.values().map(line).collect()
            } else {
                line(q)
            }
        }
        Call::PropertyList(t) => props::list(app, holder(t, ctx))?
            .iter()
            .map(|d| format!("{}\n", d.name))
            .collect(),
        Call::PropertyGet(t, name) => {
            let h = holder(t, ctx);
            let (is_default, v) = props::get(app, h, name)?;
            props::format_get(is_default, props::def(app, h, name)?.ty, &v)
        }
        Call::PropertyGetAll(t) => {
            let h = holder(t, ctx);
            let mut out = String::new();
            for d in props::list(app, h)? {
                let (is_default, v) = props::get(app, h, d.name)?;
                let line = props::format_get(is_default, d.ty, &v);
                let _ = writeln!(
                    out,
                    "{} {}",
                    d.name,
                    line.replace('\\', "\\\\").replace('\n', "\\n")
                );
            }
            out
        }
        Call::PropertyGetDefault(t, name) => {
            let h = holder(t, ctx);
            let d = props::def(app, h, name)?;
            match props::default_of(app, h, name)? {
                Some(v) => format!("type={} {}", d.ty.token(), v.to_text()),
                None => String::new(),
            }
        }
        Call::PropertyHelp(t, name) => props::def(app, holder(t, ctx), name)?.help.to_string(),
        Call::FeatureList => q.features.keys().map(|k| format!("{k}\n")).collect(),
        Call::FeatureGet(f) => q
            .features
            .get(f)
            .cloned()
            .ok_or_else(|| feature_missing(&q.name, f))?,
        Call::FeatureCheck(chain, f) => check_feature(app, q, *chain, f)?,
        Call::TagList => q.tags.iter().map(|t| format!("{t}\n")).collect(),
        Call::TagGet(t) => if q.tags.contains(t) { "1" } else { "0" }.to_string(),
        Call::LabelList => app
            .labels
            .values()
            .map(|l| format!("{}\n", l.name))
            .collect(),
        Call::LabelGet(n) => label(app, n)?.color.clone(),
        Call::LabelIndex(n) => label(app, n)?.index.to_string(),
        Call::CurrentState => current_state(app, q),
        Call::SystemInfo => system_info(app),
        Call::NotesGet => q.notes.clone(),
        Call::Events => return Err(ApiError::protocol("admin.Events is a stream, not a query")),
        _ => return Err(ApiError::protocol("internal: write call sent to query")),
    })
}

/// Qubes' `internal.GetSystemInfo`: one entry per qube with what policy
/// evaluation needs.
fn system_info(app: &App) -> String {
    let sys = crate::qrexec::system(app);
    let mut domains = serde_json::Map::new();
    for (name, d) in &sys.domains {
        let label = app
            .qubes
            .get(name)
            .and_then(|q| props::value(app, Holder::Vm(&q.name), "label").ok())
            .map(|v| v.to_text())
            .unwrap_or_default();
        let power = app.qubes.get(name).map(|q| q.power.name()).unwrap_or("NA");
        domains.insert(
            name.clone(),
            serde_json::json!({
                "tags": d.tags,
                "type": d.class,
                "template_for_dispvms": d.template_for_dispvms,
                "default_dispvm": d.default_dispvm,
                "template": d.template,
                "icon": format!("appvm-{label}"),
                "label": label,
                "guivm": null,
                "relayvm": null,
                "transport_rpc": null,
                "power_state": power,
                "uuid": d.uuid,
            }),
        );
    }
    serde_json::json!({ "domains": domains }).to_string()
}

pub(crate) fn current_state(app: &App, q: &Qube) -> String {
    let (mem, max) = match q.power {
        PowerState::Halted => (0, 0),
        _ if q.class == Class::AdminVM => (app.host.mem_total_kib, app.host.mem_total_kib),
        _ => (0, 0),
    };
    format!(
        "mem={mem} mem_static_max={max} cputime=0 power_state={}",
        q.power.name()
    )
}

fn feature_missing(vm: &str, f: &str) -> ApiError {
    ApiError::new(
        Exc::QubesFeatureNotFoundError,
        format!("Feature not set for domain {vm}: {f}"),
    )
}

fn label<'a>(app: &'a App, n: &str) -> ApiResult<&'a crate::model::Label> {
    app.label_by_name(n).ok_or_else(|| {
        ApiError::new(
            Exc::QubesLabelNotFoundError,
            format!("Label does not exist: {n}"),
        )
    })
}

fn check_feature(app: &App, q: &Qube, chain: Chain, f: &str) -> ApiResult<String> {
    if let Some(v) = q.features.get(f) {
        return Ok(v.clone());
    }
    let walk = |prop: &str| -> Option<String> {
        let mut cur = q.name.clone();
        let mut seen = BTreeSet::from([cur.clone()]);
        while let Some(next) = props::vm_ref(app, &cur, prop) {
            if !seen.insert(next.clone()) {
                break;
            }
            if let Some(v) = app.qubes.get(&next).and_then(|n| n.features.get(f)) {
                return Some(v.clone());
            }
            cur = next;
        }
        None
    };
    let from_dom0 = || app.qubes.get(DOM0).and_then(|d| d.features.get(f)).cloned();
    let found = match chain {
        Chain::Template => walk("template"),
        Chain::Netvm => walk("netvm"),
        Chain::AdminVm => from_dom0(),
        Chain::TemplateAndAdminVm => walk("template").or_else(from_dom0),
    };
    found.ok_or_else(|| feature_missing(&q.name, f))
}

/// Executes a state-changing call on a candidate state. Returns the reply body
/// and the events to publish once the state is durable.
pub fn mutate(
    app: &mut App,
    ctx: &Ctx,
    call: &Call,
    random: impl FnMut() -> u32,
) -> ApiResult<(String, Vec<Event>)> {
    let dest = ctx.dest.as_str();
    let mut events = Vec::new();
    match call {
        Call::PropertySet(t, name, payload) => {
            let h = holder(t, ctx);
            let v = props::parse_new_value(app, h, name, payload)?;
            events.push(props::store(app, h, name, v)?);
        }
        Call::PropertyReset(t, name) => {
            events.extend(props::reset(app, holder(t, ctx), name)?);
        }
        Call::FeatureSet(f, v) => {
            let q = app.vm_mut(dest)?;
            let old = q.features.insert(f.clone(), v.clone());
            if old.as_ref() != Some(v) {
                let mut kwargs = vec![
                    ("feature".to_string(), f.clone()),
                    ("value".to_string(), v.clone()),
                ];
                if let Some(o) = old {
                    kwargs.push(("oldvalue".into(), o));
                }
                events.push(Event {
                    subject: dest.into(),
                    event: format!("feature-set:{f}"),
                    kwargs,
                });
            }
        }
        Call::FeatureRemove(f) => {
            let q = app.vm_mut(dest)?;
            if q.features.remove(f).is_none() {
                return Err(feature_missing(dest, f));
            }
            events.push(Event {
                subject: dest.into(),
                event: format!("feature-delete:{f}"),
                kwargs: vec![("feature".into(), f.clone())],
            });
        }
        Call::TagSet(t) => {
            if app.vm_mut(dest)?.tags.insert(t.clone()) {
                events.push(tag_event(dest, "tag-add", t));
            }
        }
        Call::TagRemove(t) => {
            if !app.vm_mut(dest)?.tags.remove(t) {
                return Err(ApiError::new(
                    Exc::QubesTagNotFoundError,
                    format!("Tag not set for domain {dest}: {t}"),
                ));
            }
            events.push(tag_event(dest, "tag-delete", t));
        }
        Call::LabelCreate(name, color) => {
            if app.label_by_name(name).is_some() {
                return Err(ApiError::value(format!("label '{name}' already exists")));
            }
            let index = app
                .labels
                .keys()
                .max()
                .copied()
                .unwrap_or(MAX_DEFAULT_LABEL)
                + 1;
            app.labels.insert(
                index,
                crate::model::Label {
                    index,
                    name: name.clone(),
                    color: color.clone(),
                },
            );
        }
        Call::LabelRemove(name) => {
            let l = label(app, name)?.clone();
            if l.index <= MAX_DEFAULT_LABEL {
                return Err(ApiError::new(
                    Exc::PermissionDenied,
                    format!("Cannot remove built-in label '{name}'"),
                ));
            }
            let users: Vec<&str> = app
                .qubes
                .values()
                .filter(|q| q.props.get("label") == Some(&Value::Label(name.clone())))
                .map(|q| q.name.as_str())
                .collect();
            if !users.is_empty() {
                return Err(ApiError::new(
                    Exc::QubesLabelInUseError,
                    format!(
                        "Label is still in use: '{name}' (by {}); relabel those qubes first",
                        users.join(", ")
                    ),
                ));
            }
            app.labels.remove(&l.index);
        }
        Call::Create(args) => events.extend(create(app, ctx, args, random)?),
        Call::Remove => {
            let q = app.vm(dest)?;
            if q.power != PowerState::Halted {
                return Err(ApiError::new(
                    Exc::QubesVMNotHaltedError,
                    format!("Domain is not powered off: '{dest}'"),
                ));
            }
            if props::value(app, Holder::Vm(dest), "installed_by_rpm")?.as_bool() {
                return Err(ApiError::value(format!(
                    "qube '{dest}' was installed by a package; remove the package instead"
                )));
            }
            let users = referrers(app, dest);
            if !users.is_empty() {
                return Err(ApiError::new(
                    Exc::QubesVMInUseError,
                    format!(
                        "Domain is in use: '{dest}'; it is the {}. Change those first (bulkhead prefs / global-prefs)",
                        users.join(", ")
                    ),
                ));
            }
            app.qubes.remove(dest);
            events.push(Event {
                subject: String::new(),
                event: "domain-delete".into(),
                kwargs: vec![("vm".into(), dest.into())],
            });
        }
        Call::NotesSet(text) => {
            app.vm_mut(dest)?.notes = text.clone();
        }
        Call::SetPower(state) => {
            app.vm_mut(dest)?.power = *state;
            return Ok((String::new(), events));
        }
        Call::SetVolume(vol, settings) => {
            let q = app.vm_mut(dest)?;
            if *settings == crate::model::VolumeSettings::default() {
                q.volumes.remove(vol);
            } else {
                q.volumes.insert(vol.clone(), settings.clone());
            }
        }
        other => {
            return Err(ApiError::protocol(format!(
                "internal: {other:?} is not a write"
            )))
        }
    }
    check_consistency(app)?;
    Ok((String::new(), events))
}

fn tag_event(vm: &str, kind: &str, t: &str) -> Event {
    Event {
        subject: vm.into(),
        event: format!("{kind}:{t}"),
        kwargs: vec![("tag".into(), t.into())],
    }
}

fn create(
    app: &mut App,
    ctx: &Ctx,
    args: &CreateArgs,
    random: impl FnMut() -> u32,
) -> ApiResult<Vec<Event>> {
    if app.qubes.contains_key(&args.name) {
        return Err(ApiError::new(
            Exc::QubesVMAlreadyExistsError,
            format!("VM {} already exists", args.name),
        ));
    }
    if app.label_by_name(&args.label).is_none() {
        return Err(ApiError::new(
            Exc::QubesLabelNotFoundError,
            format!("Label does not exist: {}", args.label),
        ));
    }
    let mut props_map = BTreeMap::new();
    props_map.insert("label".to_string(), Value::Label(args.label.clone()));
    if args.class.has_template() {
        let global = if args.class == Class::DispVM {
            "default_dispvm"
        } else {
            "default_template"
        };
        let template = match &args.template {
            Some(t) => t.clone(),
            None => props::value(app, Holder::Global, global)?
                .as_vm()
                .map(str::to_string)
                .ok_or_else(|| {
                    ApiError::value(format!(
                        "no template given and global {global} is not set; pass one"
                    ))
                })?,
        };
        let tq = app.vm(&template)?;
        let usable = match args.class {
            Class::DispVM => {
                tq.class == Class::AppVM
                    && props::value(app, Holder::Vm(&template), "template_for_dispvms")?.as_bool()
            }
            _ => tq.class == Class::TemplateVM,
        };
        if !usable {
            let want = if args.class == Class::DispVM {
                "an AppVM with template_for_dispvms=True"
            } else {
                "a TemplateVM"
            };
            return Err(ApiError::value(format!(
                "'{template}' cannot be the template of a {}: it must be {want}",
                args.class.name()
            )));
        }
        props_map.insert("template".to_string(), Value::Vm(Some(template)));
    } else if let Some(t) = &args.template {
        return Err(ApiError::value(format!(
            "a {} has no template; drop the '+{t}' argument",
            args.class.name()
        )));
    }
    if args.class == Class::DispVM {
        let id = app.next_dispid(random)?;
        props_map.insert("dispid".to_string(), Value::Int(Some(i64::from(id))));
    }
    let qid = app.next_qid()?;
    let q = Qube {
        name: args.name.clone(),
        qid,
        uuid: Uuid::new_v4(),
        class: args.class,
        props: props_map,
        features: BTreeMap::new(),
        tags: BTreeSet::from([format!("created-by-{}", ctx.source)]),
        notes: String::new(),
        pools: args.pools.clone(),
        volumes: BTreeMap::new(),
        power: PowerState::Halted,
    };
    app.qubes.insert(args.name.clone(), q);
    Ok(vec![Event {
        subject: String::new(),
        event: "domain-add".into(),
        kwargs: vec![("vm".into(), args.name.clone())],
    }])
}

/// Which events an `admin.Events` subscriber sees: all (dest dom0) or one qube's.
#[derive(Debug, Clone)]
pub struct EventFilter(pub Option<String>);

impl EventFilter {
    pub fn for_dest(dest: &str) -> Self {
        Self(if dest == DOM0 {
            None
        } else {
            Some(dest.to_string())
        })
    }

    pub fn matches(&self, ev: &Event) -> bool {
        match &self.0 {
            None => true,
            Some(vm) => &ev.subject == vm,
        }
    }
}
