//! Typed properties: the table of every property with its type, scope and
//! access, plus default resolution (qube → template → global) and validation
//! of new values. Names, types and defaults follow Qubes
//! (`shared/reference/qubes-compat.md` §3).

use std::net::{Ipv4Addr, Ipv6Addr};

use bulkhead_proto::admin::Event;
use bulkhead_proto::names::validate_token;

use super::{App, Class, Qube, Value, DOM0, KNOWN_POOLS};
use crate::error::{ApiError, ApiResult, Exc};

pub(crate) const ADMIN: u8 = 1;
pub(crate) const APP: u8 = 2;
pub(crate) const TEMPLATE: u8 = 4;
pub(crate) const STANDALONE: u8 = 8;
pub(crate) const DISP: u8 = 16;
const QUBES: u8 = APP | TEMPLATE | STANDALONE | DISP;
const ALL: u8 = QUBES | ADMIN;

/// Highest qid handed out.
pub const MAX_QID: u32 = 9999;
/// Longest property value accepted.
pub const MAX_VALUE_LEN: usize = 4096;

/// Type tokens of `property.Get` (`type=<t>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropType {
    Vm,
    Int,
    Bool,
    Label,
    Str,
}

impl PropType {
    pub fn token(self) -> &'static str {
        match self {
            PropType::Vm => "vm",
            PropType::Int => "int",
            PropType::Bool => "bool",
            PropType::Label => "label",
            PropType::Str => "str",
        }
    }
}

/// Who may change a property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Settable and resettable.
    Rw,
    /// Settable, but has no default to reset to.
    Required,
    /// Set once at creation, never again.
    WriteOnce,
    /// Computed by Bulkhead.
    ReadOnly,
}

/// One property's definition.
#[derive(Debug)]
pub struct PropDef {
    pub name: &'static str,
    pub ty: PropType,
    /// Classes that have it (bit set of `ADMIN`, `APP`…).
    scope: u8,
    /// Classes on which it can be written (others see it read-only).
    writable: u8,
    pub access: Access,
    /// Whether an empty value (None) may be set.
    pub nullable: bool,
    pub help: &'static str,
}

const fn p(
    name: &'static str,
    ty: PropType,
    scope: u8,
    access: Access,
    nullable: bool,
    help: &'static str,
) -> PropDef {
    PropDef {
        name,
        ty,
        scope,
        writable: scope,
        access,
        nullable,
        help,
    }
}

use Access::{ReadOnly as RO, Required as REQ, Rw as RW, WriteOnce as WO};
use PropType::{Bool as B, Int as I, Label as L, Str as S, Vm as V};

/// Qube properties, sorted by name.
static VM_PROPS: &[PropDef] = &[
    p(
        "audiovm",
        V,
        QUBES,
        RW,
        true,
        "Qube that provides audio to this qube.",
    ),
    p(
        "auto_cleanup",
        B,
        DISP,
        RW,
        false,
        "Remove this disposable when it stops.",
    ),
    p(
        "autostart",
        B,
        QUBES,
        RW,
        false,
        "Start this qube when the daemon starts.",
    ),
    p(
        "backup_timestamp",
        I,
        QUBES,
        RW,
        true,
        "Time of the last backup of this qube (unix seconds).",
    ),
    p(
        "debug",
        B,
        QUBES,
        RW,
        false,
        "Debug mode: keep logs and consoles verbose.",
    ),
    PropDef {
        writable: ALL,
        ..p(
            "default_dispvm",
            V,
            ALL,
            RW,
            true,
            "Disposable template used for @dispvm calls from this qube.",
        )
    },
    p(
        "default_user",
        S,
        QUBES,
        RW,
        false,
        "User that runs commands in this qube unless told otherwise.",
    ),
    p(
        "devices_denied",
        S,
        ALL,
        RW,
        false,
        "Device interfaces this qube may never be given.",
    ),
    p(
        "dispid",
        I,
        DISP,
        WO,
        false,
        "Disposable id, allocated at creation.",
    ),
    p(
        "guivm",
        V,
        QUBES,
        RW,
        true,
        "Qube that shows this qube's windows.",
    ),
    p(
        "icon",
        S,
        ALL,
        RO,
        false,
        "Icon name, from class and label.",
    ),
    p(
        "include_in_backups",
        B,
        ALL,
        RW,
        false,
        "Whether backups include this qube by default.",
    ),
    p(
        "installed_by_rpm",
        B,
        QUBES,
        RW,
        false,
        "Installed by a package; cannot be removed by hand.",
    ),
    p(
        "ip",
        S,
        QUBES,
        RW,
        true,
        "IPv4 address of this qube (computed from qid when networked).",
    ),
    p(
        "ip6",
        S,
        QUBES,
        RW,
        true,
        "IPv6 address of this qube (when feature ipv6 is on).",
    ),
    p(
        "kernel",
        S,
        QUBES,
        RW,
        true,
        "Kernel (in the kernels pool) used to boot this qube.",
    ),
    p(
        "kernelopts",
        S,
        QUBES,
        RW,
        false,
        "Kernel command line options.",
    ),
    p(
        "keyboard_layout",
        S,
        ALL,
        RW,
        false,
        "Keyboard layout (layout+variant+options).",
    ),
    p("klass", S, ALL, RO, false, "Class of this qube."),
    p(
        "label",
        L,
        ALL,
        REQ,
        false,
        "Colourful label: the frame colour of this qube's windows.",
    ),
    p(
        "mac",
        S,
        QUBES,
        RW,
        false,
        "MAC address of this qube's network interface.",
    ),
    p(
        "management_dispvm",
        V,
        QUBES,
        RW,
        true,
        "Disposable template used to manage this qube.",
    ),
    PropDef {
        writable: QUBES,
        ..p(
            "maxmem",
            I,
            ALL,
            RW,
            false,
            "Maximum memory (MiB) with balancing.",
        )
    },
    p("memory", I, QUBES, RW, false, "Memory (MiB) at start."),
    p("name", S, ALL, WO, false, "Name of this qube."),
    p(
        "netvm",
        V,
        QUBES,
        RW,
        true,
        "Qube that gives this qube network access; empty for none.",
    ),
    p(
        "provides_network",
        B,
        QUBES,
        RW,
        false,
        "Whether this qube can be another qube's netvm.",
    ),
    p(
        "qid",
        I,
        ALL,
        WO,
        false,
        "Internal id, allocated at creation.",
    ),
    p(
        "qrexec_timeout",
        I,
        QUBES,
        RW,
        false,
        "Seconds to wait for the qube's agent at start.",
    ),
    p(
        "shutdown_timeout",
        I,
        QUBES,
        RW,
        false,
        "Seconds to wait for a clean shutdown before killing.",
    ),
    p(
        "start_time",
        S,
        QUBES,
        RO,
        true,
        "When this qube was started (unix seconds).",
    ),
    p(
        "template",
        V,
        APP | DISP,
        REQ,
        false,
        "Template this qube's root is based on.",
    ),
    p(
        "template_for_dispvms",
        B,
        APP,
        RW,
        false,
        "Whether disposables can be made from this qube.",
    ),
    p(
        "updateable",
        B,
        ALL,
        RO,
        false,
        "Whether this qube's root persists (no template).",
    ),
    p("uuid", S, ALL, WO, false, "UUID of this qube."),
    p("vcpus", I, QUBES, RW, false, "Number of virtual CPUs."),
    p(
        "virt_mode",
        S,
        QUBES,
        RW,
        false,
        "Isolation backend: 'vm' (a VM under QEMU) or 'ns' (a namespace sandbox, weaker).",
    ),
    p(
        "visible_gateway",
        S,
        QUBES,
        RO,
        true,
        "Default gateway this qube sees.",
    ),
    p(
        "visible_ip",
        S,
        QUBES,
        RO,
        true,
        "IPv4 address this qube sees.",
    ),
    p(
        "visible_netmask",
        S,
        QUBES,
        RO,
        true,
        "Netmask this qube sees.",
    ),
];

const G: u8 = 0xff;

/// Global properties, sorted by name.
static GLOBAL_PROPS: &[PropDef] = &[
    p(
        "check_updates_vm",
        B,
        G,
        RW,
        false,
        "Check for updates inside qubes.",
    ),
    p("clockvm", V, G, RW, true, "Qube that keeps the time."),
    p(
        "default_audiovm",
        V,
        G,
        RW,
        true,
        "Default audiovm for new qubes.",
    ),
    p(
        "default_dispvm",
        V,
        G,
        RW,
        true,
        "Default disposable template.",
    ),
    p(
        "default_guivm",
        V,
        G,
        RW,
        true,
        "Default guivm for new qubes.",
    ),
    p(
        "default_kernel",
        S,
        G,
        RW,
        true,
        "Default kernel for qubes.",
    ),
    p(
        "default_netvm",
        V,
        G,
        RW,
        true,
        "Default netvm for new AppVMs.",
    ),
    p("default_pool", S, G, RW, false, "Default storage pool."),
    p(
        "default_pool_kernel",
        S,
        G,
        RW,
        false,
        "Default pool for kernel volumes.",
    ),
    p(
        "default_pool_private",
        S,
        G,
        RW,
        false,
        "Default pool for private volumes.",
    ),
    p(
        "default_pool_root",
        S,
        G,
        RW,
        false,
        "Default pool for root volumes.",
    ),
    p(
        "default_pool_volatile",
        S,
        G,
        RW,
        false,
        "Default pool for volatile volumes.",
    ),
    p(
        "default_qrexec_timeout",
        I,
        G,
        RW,
        false,
        "Default qrexec_timeout (seconds).",
    ),
    p(
        "default_shutdown_timeout",
        I,
        G,
        RW,
        false,
        "Default shutdown_timeout (seconds).",
    ),
    p(
        "default_template",
        V,
        G,
        RW,
        true,
        "Template used when none is given.",
    ),
    p(
        "default_virt_mode",
        S,
        G,
        RW,
        false,
        "Default isolation backend: 'vm' or 'ns'.",
    ),
    p(
        "management_dispvm",
        V,
        G,
        RW,
        true,
        "Default management disposable template.",
    ),
    p(
        "stats_interval",
        I,
        G,
        RW,
        false,
        "Seconds between vm-stats events.",
    ),
    p(
        "updatevm",
        V,
        G,
        RW,
        true,
        "Qube that downloads updates for dom0.",
    ),
];

/// Which object a property belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder<'a> {
    Global,
    Vm(&'a str),
}

impl Holder<'_> {
    fn display(&self) -> &str {
        match self {
            Holder::Global => "Qubes",
            Holder::Vm(n) => n,
        }
    }

    /// Event subject: the qube name, or empty for global.
    pub fn subject(&self) -> String {
        match self {
            Holder::Global => String::new(),
            Holder::Vm(n) => n.to_string(),
        }
    }
}

/// All property definitions visible on a holder, sorted by name.
pub fn list<'a>(app: &App, holder: Holder<'_>) -> ApiResult<Vec<&'a PropDef>> {
    Ok(match holder {
        Holder::Global => GLOBAL_PROPS.iter().collect(),
        Holder::Vm(n) => {
            let bit = app.vm(n)?.class.bit();
            VM_PROPS.iter().filter(|d| d.scope & bit != 0).collect()
        }
    })
}

/// The definition of `name` on `holder`, or `QubesNoSuchPropertyError`.
pub fn def(app: &App, holder: Holder<'_>, name: &str) -> ApiResult<&'static PropDef> {
    let found = match holder {
        Holder::Global => GLOBAL_PROPS.iter().find(|d| d.name == name),
        Holder::Vm(n) => {
            let bit = app.vm(n)?.class.bit();
            VM_PROPS
                .iter()
                .find(|d| d.name == name && d.scope & bit != 0)
        }
    };
    found.ok_or_else(|| ApiError::no_such_property(holder.display(), name))
}

/// Current value and whether it is the default.
pub fn get(app: &App, holder: Holder<'_>, name: &str) -> ApiResult<(bool, Value)> {
    let d = def(app, holder, name)?;
    match holder {
        Holder::Global => match app.global_props.get(name) {
            Some(v) => Ok((false, v.clone())),
            None => Ok((true, global_default(app, name))),
        },
        Holder::Vm(n) => {
            let q = app.vm(n)?;
            match name {
                "name" => return Ok((false, Value::Str(Some(q.name.clone())))),
                "qid" => return Ok((false, Value::Int(Some(q.qid.into())))),
                "uuid" => return Ok((false, Value::Str(Some(q.uuid.to_string())))),
                _ => {}
            }
            match q.props.get(name) {
                Some(v) if d.access != Access::ReadOnly => Ok((false, v.clone())),
                _ => Ok((true, vm_default(app, q, name, 0).unwrap_or(null(d.ty)))),
            }
        }
    }
}

/// Value only.
pub fn value(app: &App, holder: Holder<'_>, name: &str) -> ApiResult<Value> {
    get(app, holder, name).map(|(_, v)| v)
}

/// Convenience: a VM-reference property of a qube, resolved (None if unset or invalid).
pub fn vm_ref(app: &App, vm: &str, name: &str) -> Option<String> {
    value(app, Holder::Vm(vm), name)
        .ok()
        .and_then(|v| v.as_vm().map(str::to_string))
}

/// The default a property would have if reset, or None if it has no default.
pub fn default_of(app: &App, holder: Holder<'_>, name: &str) -> ApiResult<Option<Value>> {
    let d = def(app, holder, name)?;
    Ok(match holder {
        Holder::Global => Some(global_default(app, name)),
        Holder::Vm(n) => {
            if matches!(d.access, Access::Required | Access::WriteOnce) {
                None
            } else {
                vm_default(app, app.vm(n)?, name, 0)
            }
        }
    })
}

/// `default=<True|False> type=<t> <value>` (no newline), as `property.Get` prints.
pub fn format_get(is_default: bool, ty: PropType, v: &Value) -> String {
    format!(
        "default={} type={} {}",
        if is_default { "True" } else { "False" },
        ty.token(),
        v.to_text()
    )
}

fn null(ty: PropType) -> Value {
    match ty {
        PropType::Vm => Value::Vm(None),
        PropType::Int => Value::Int(None),
        PropType::Bool => Value::Bool(false),
        PropType::Label => Value::Label(String::new()),
        PropType::Str => Value::Str(None),
    }
}

fn s(v: &str) -> Value {
    Value::Str(Some(v.to_string()))
}

fn global_default(app: &App, name: &str) -> Value {
    match name {
        "check_updates_vm" => Value::Bool(true),
        "default_audiovm" | "default_guivm" => Value::Vm(Some(DOM0.into())),
        "clockvm" | "default_dispvm" | "default_netvm" | "default_template"
        | "management_dispvm" | "updatevm" => Value::Vm(None),
        "default_kernel" => Value::Str(None),
        "default_pool" => s("default"),
        "default_pool_kernel" => s("linux-kernel"),
        "default_pool_private" | "default_pool_root" | "default_pool_volatile" => {
            value(app, Holder::Global, "default_pool").unwrap_or_else(|_| s("default"))
        }
        "default_qrexec_timeout" | "default_shutdown_timeout" => Value::Int(Some(60)),
        "default_virt_mode" => s("vm"),
        "stats_interval" => Value::Int(Some(3)),
        _ => Value::Str(None),
    }
}

fn global(app: &App, name: &str) -> Value {
    value(app, Holder::Global, name).unwrap_or(Value::Str(None))
}

/// Depth limit for template/netvm chains while resolving defaults (the
/// consistency check forbids loops; this only guards against a corrupt state).
const MAX_CHAIN: u32 = 16;

/// The template's value if the qube has a template, else `fallback`.
fn from_template(app: &App, q: &Qube, name: &str, depth: u32, fallback: Value) -> Option<Value> {
    if depth < MAX_CHAIN {
        if let Some(t) = q.props.get("template").and_then(Value::as_vm) {
            if let Ok(tq) = app.vm(t) {
                return match tq.props.get(name) {
                    Some(v) => Some(v.clone()),
                    None => vm_default(app, tq, name, depth + 1),
                };
            }
        }
    }
    Some(fallback)
}

/// Resolved value (explicit or default) of a qube property, chain-safe.
fn resolved(app: &App, q: &Qube, name: &str, depth: u32) -> Option<Value> {
    match q.props.get(name) {
        Some(v) => Some(v.clone()),
        None if depth < MAX_CHAIN => vm_default(app, q, name, depth + 1),
        None => None,
    }
}

/// IPv4 address from an id, as Qubes' `vmid_to_ipv4`.
pub fn vmid_to_ipv4(prefix: &str, id: u32) -> String {
    if id < 255 {
        format!("{prefix}.{}.{}", id >> 8, id & 255)
    } else {
        format!("{prefix}.{}.{}", (id - 1) / 254, (id - 1) % 254 + 1)
    }
}

fn feature_on(v: Option<&String>) -> bool {
    matches!(v.map(String::as_str), Some(x) if !x.is_empty() && x != "0" && x != "False")
}

fn vm_default(app: &App, q: &Qube, name: &str, depth: u32) -> Option<Value> {
    let netvm = || resolved(app, q, "netvm", depth).and_then(|v| v.as_vm().map(str::to_string));
    // Qubes' is_networked(): has a netvm, or is one.
    let networked = || {
        netvm().is_some()
            || resolved(app, q, "provides_network", depth).is_some_and(|v| v.as_bool())
    };
    let is_disp = q.class == Class::DispVM;
    Some(match name {
        "audiovm" => global(app, "default_audiovm"),
        "guivm" => global(app, "default_guivm"),
        "auto_cleanup"
        | "autostart"
        | "debug"
        | "installed_by_rpm"
        | "provides_network"
        | "template_for_dispvms" => Value::Bool(false),
        "backup_timestamp" => Value::Int(None),
        "default_dispvm" => {
            if is_disp {
                q.props.get("template").cloned().unwrap_or(Value::Vm(None))
            } else {
                global(app, "default_dispvm")
            }
        }
        "default_user" => return from_template(app, q, name, depth, s("user")),
        "devices_denied" => s(""),
        "icon" => {
            let label = q.props.get("label").map(Value::to_text).unwrap_or_default();
            let dvm = resolved(app, q, "template_for_dispvms", depth).is_some_and(|v| v.as_bool());
            let kind = match q.class {
                Class::AdminVM => "adminvm",
                Class::TemplateVM => "templatevm",
                Class::StandaloneVM => "standalonevm",
                Class::DispVM => "dispvm",
                Class::AppVM if dvm => "templatevm",
                Class::AppVM => "appvm",
            };
            s(&format!("{kind}-{label}"))
        }
        "include_in_backups" => {
            if is_disp {
                Value::Bool(!resolved(app, q, "auto_cleanup", depth).is_some_and(|v| v.as_bool()))
            } else {
                Value::Bool(true)
            }
        }
        "ip" => match networked() {
            true if is_disp => {
                let id = q.props.get("dispid").and_then(Value::as_int).unwrap_or(0);
                s(&vmid_to_ipv4("10.138", u32::try_from(id).unwrap_or(0)))
            }
            true => s(&vmid_to_ipv4("10.137", q.qid)),
            false => Value::Str(None),
        },
        "ip6" => match netvm() {
            Some(n)
                if feature_on(q.features.get("ipv6"))
                    || app
                        .vm(&n)
                        .is_ok_and(|nq| feature_on(nq.features.get("ipv6"))) =>
            {
                if is_disp {
                    let id = q.props.get("dispid").and_then(Value::as_int).unwrap_or(0);
                    s(&format!("fd09:24ef:4179::a8a:{id:x}"))
                } else {
                    s(&format!("fd09:24ef:4179::a89:{:x}", q.qid))
                }
            }
            _ => Value::Str(None),
        },
        "kernel" => return from_template(app, q, name, depth, global(app, "default_kernel")),
        "kernelopts" => return from_template(app, q, name, depth, s("")),
        "keyboard_layout" => s("us++"),
        "klass" => s(q.class.name()),
        "mac" => s("00:16:3e:5e:6c:00"),
        "management_dispvm" => {
            return from_template(app, q, name, depth, global(app, "management_dispvm"))
        }
        "maxmem" => {
            if q.class == Class::AdminVM {
                Value::Int(Some(
                    i64::try_from(app.host.mem_total_kib / 1024).unwrap_or(i64::MAX),
                ))
            } else {
                let half = i64::try_from(app.host.mem_total_kib / 2048).unwrap_or(i64::MAX);
                return from_template(app, q, name, depth, Value::Int(Some(half.min(4000))));
            }
        }
        "memory" => return from_template(app, q, name, depth, Value::Int(Some(400))),
        "vcpus" => return from_template(app, q, name, depth, Value::Int(Some(2))),
        "netvm" => {
            if q.class == Class::TemplateVM
                || resolved(app, q, "provides_network", depth).is_some_and(|v| v.as_bool())
            {
                Value::Vm(None)
            } else if is_disp {
                let t = q
                    .props
                    .get("template")
                    .and_then(Value::as_vm)
                    .and_then(|t| app.vm(t).ok());
                match t {
                    Some(tq) if depth < MAX_CHAIN => {
                        resolved(app, tq, "netvm", depth + 1).unwrap_or(Value::Vm(None))
                    }
                    _ => Value::Vm(None),
                }
            } else {
                match global(app, "default_netvm") {
                    Value::Vm(Some(n)) if n == q.name => Value::Vm(None),
                    other => other,
                }
            }
        }
        "qrexec_timeout" => {
            return from_template(app, q, name, depth, global(app, "default_qrexec_timeout"))
        }
        "shutdown_timeout" => {
            return from_template(app, q, name, depth, global(app, "default_shutdown_timeout"))
        }
        "start_time" => Value::Str(None),
        "updateable" => Value::Bool(matches!(
            q.class,
            Class::AdminVM | Class::TemplateVM | Class::StandaloneVM
        )),
        "virt_mode" => return from_template(app, q, name, depth, global(app, "default_virt_mode")),
        "visible_ip" => match q.features.get("net.fake-ip") {
            Some(ip) => s(ip),
            None => resolved(app, q, "ip", depth).unwrap_or(Value::Str(None)),
        },
        "visible_gateway" => match (q.features.get("net.fake-gateway"), netvm()) {
            (Some(gw), _) => s(gw),
            (None, Some(n)) => match app.vm(&n) {
                Ok(nq) if depth < MAX_CHAIN => {
                    resolved(app, nq, "visible_ip", depth + 1).unwrap_or(Value::Str(None))
                }
                _ => Value::Str(None),
            },
            (None, None) => Value::Str(None),
        },
        "visible_netmask" => match (q.features.get("net.fake-netmask"), netvm()) {
            (Some(m), _) => s(m),
            (None, Some(_)) => s("255.255.255.255"),
            (None, None) => Value::Str(None),
        },
        _ => return None,
    })
}

/// Parses and validates a new value for `name` on `holder`, without storing it.
pub fn parse_new_value(
    app: &App,
    holder: Holder<'_>,
    name: &str,
    untrusted: &[u8],
) -> ApiResult<Value> {
    let d = def(app, holder, name)?;
    let who = holder.display();
    let bit = match holder {
        Holder::Global => G,
        Holder::Vm(n) => app.vm(n)?.class.bit(),
    };
    if matches!(d.access, Access::ReadOnly | Access::WriteOnce) || d.writable & bit == 0 {
        return Err(ApiError::new(
            Exc::QubesPropertyValueError,
            format!("Property '{name}' of '{who}' is read-only; it cannot be set"),
        ));
    }
    if untrusted.len() > MAX_VALUE_LEN {
        return Err(ApiError::new(
            Exc::QubesPropertyValueError,
            format!("Value for property '{name}' of '{who}' is longer than {MAX_VALUE_LEN} bytes"),
        ));
    }
    if !untrusted.iter().all(|b| (0x20..0x7f).contains(b)) {
        return Err(ApiError::new(
            Exc::QubesPropertyValueError,
            format!("Value for property '{name}' of '{who}' must be printable ASCII"),
        ));
    }
    // Checked printable ASCII above, so this is valid UTF-8.
    let text = String::from_utf8_lossy(untrusted).into_owned();
    let bad = |why: &str| ApiError::prop_value(who, name, &text, why);
    if text.is_empty() && d.ty != PropType::Str {
        if d.nullable {
            return Ok(null(d.ty));
        }
        return Err(bad(
            "an empty value is not allowed here; use reset to return to the default",
        ));
    }
    let v = match d.ty {
        PropType::Bool => match text.to_ascii_lowercase().as_str() {
            "1" | "yes" | "true" | "on" => Value::Bool(true),
            "0" | "no" | "false" | "off" => Value::Bool(false),
            _ => return Err(bad("expected True or False")),
        },
        PropType::Int => {
            let n = parse_int(&text).ok_or_else(|| bad("expected a decimal integer"))?;
            let min = match name {
                "maxmem" | "backup_timestamp" => 0,
                _ => 1,
            };
            if n < min {
                return Err(bad(&format!("must be at least {min}")));
            }
            if name == "vcpus" && n > 512 {
                return Err(bad("must be at most 512"));
            }
            Value::Int(Some(n))
        }
        PropType::Label => {
            if app.label_by_name(&text).is_none() {
                return Err(ApiError::new(
                    Exc::QubesLabelNotFoundError,
                    format!("Label does not exist: {text}"),
                ));
            }
            Value::Label(text.clone())
        }
        PropType::Vm => {
            let target = app
                .vm(&text)
                .map_err(|_| bad(&format!("qube '{text}' does not exist")))?;
            check_vm_target(app, holder, name, target).map_err(|why| bad(&why))?;
            Value::Vm(Some(text.clone()))
        }
        PropType::Str => {
            if text.is_empty() {
                if d.nullable {
                    return Ok(Value::Str(None));
                }
                if !matches!(name, "kernelopts" | "devices_denied") {
                    return Err(bad("an empty value is not allowed here"));
                }
            }
            check_str(name, &text).map_err(bad)?;
            Value::Str(Some(text.clone()))
        }
    };
    Ok(v)
}

fn parse_int(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn check_str(name: &str, text: &str) -> Result<(), &'static str> {
    let ok = match name {
        "virt_mode" | "default_virt_mode" => {
            if !matches!(text, "vm" | "ns") {
                return Err("expected 'vm' or 'ns'");
            }
            true
        }
        "mac" => {
            let parts: Vec<&str> = text.split(':').collect();
            parts.len() == 6
                && parts
                    .iter()
                    .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
        }
        "ip" => text.parse::<Ipv4Addr>().is_ok(),
        "ip6" => text.parse::<Ipv6Addr>().is_ok(),
        "default_user" => {
            text.len() <= 32
                && !text.starts_with('-')
                && text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        }
        "kernel" | "default_kernel" => validate_token(text).is_ok() && !text.starts_with('.'),
        "default_pool"
        | "default_pool_kernel"
        | "default_pool_private"
        | "default_pool_root"
        | "default_pool_volatile" => {
            if !KNOWN_POOLS.contains(&text) {
                return Err("no such pool (known pools: default, linux-kernel)");
            }
            true
        }
        "keyboard_layout" => text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+_,-".contains(&b)),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err("malformed value")
    }
}

/// Rules for what a VM-reference property may point at.
fn check_vm_target(app: &App, holder: Holder<'_>, name: &str, target: &Qube) -> Result<(), String> {
    let tname = &target.name;
    let provides = || value(app, Holder::Vm(tname), "provides_network").is_ok_and(|v| v.as_bool());
    let dvm_template =
        || value(app, Holder::Vm(tname), "template_for_dispvms").is_ok_and(|v| v.as_bool());
    match name {
        "netvm" | "default_netvm" => {
            if Holder::Vm(tname) == holder {
                return Err("a qube cannot be its own netvm".into());
            }
            if !provides() {
                return Err(format!(
                    "qube '{tname}' does not provide network; set its provides_network to True first"
                ));
            }
        }
        "template" => {
            let Holder::Vm(h) = holder else { return Ok(()) };
            let q = app.vm(h).map_err(|e| e.message)?;
            if q.power != super::PowerState::Halted {
                return Err(format!("qube '{h}' must be halted to change its template"));
            }
            if q.class == Class::DispVM {
                if target.class != Class::AppVM || !dvm_template() {
                    return Err(format!("'{tname}' is not a disposable template (an AppVM with template_for_dispvms=True)"));
                }
            } else if target.class != Class::TemplateVM {
                return Err(format!(
                    "'{tname}' is a {}, not a TemplateVM",
                    target.class.name()
                ));
            }
        }
        "default_template" if target.class != Class::TemplateVM => {
            return Err(format!(
                "'{tname}' is a {}, not a TemplateVM",
                target.class.name()
            ));
        }
        "default_dispvm" | "management_dispvm" if !dvm_template() => {
            return Err(format!(
                "'{tname}' is not a disposable template; set its template_for_dispvms to True first"
            ));
        }
        _ => {}
    }
    Ok(())
}

/// Sets a property (value already validated) and returns the event to emit.
pub fn store(app: &mut App, holder: Holder<'_>, name: &str, v: Value) -> ApiResult<Event> {
    let old = value(app, holder, name)?;
    match holder {
        Holder::Global => {
            app.global_props.insert(name.to_string(), v.clone());
        }
        Holder::Vm(n) => {
            app.vm_mut(n)?.props.insert(name.to_string(), v.clone());
        }
    }
    Ok(Event {
        subject: holder.subject(),
        event: format!("property-set:{name}"),
        kwargs: vec![
            ("name".into(), name.into()),
            ("newvalue".into(), v.to_event_text()),
            ("oldvalue".into(), old.to_event_text()),
        ],
    })
}

/// Resets a property to its default; `None` when it already was at default.
pub fn reset(app: &mut App, holder: Holder<'_>, name: &str) -> ApiResult<Option<Event>> {
    let d = def(app, holder, name)?;
    let who = holder.display().to_string();
    if d.access != Access::Rw {
        return Err(ApiError::new(
            Exc::QubesPropertyValueError,
            format!("Property '{name}' of '{who}' has no default and cannot be reset"),
        ));
    }
    let old = value(app, holder, name)?;
    let removed = match holder {
        Holder::Global => app.global_props.remove(name),
        Holder::Vm(n) => app.vm_mut(n)?.props.remove(name),
    };
    Ok(removed.map(|_| Event {
        subject: holder.subject(),
        event: format!("property-reset:{name}"),
        kwargs: vec![
            ("name".into(), name.into()),
            ("oldvalue".into(), old.to_event_text()),
        ],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HostInfo;

    #[test]
    fn tables_are_sorted_and_unique() {
        for table in [VM_PROPS, GLOBAL_PROPS] {
            for w in table.windows(2) {
                assert!(w[0].name < w[1].name, "{} >= {}", w[0].name, w[1].name);
            }
        }
    }

    #[test]
    fn ipv4_from_id_matches_qubes() {
        assert_eq!(vmid_to_ipv4("10.137", 9), "10.137.0.9");
        assert_eq!(vmid_to_ipv4("10.137", 254), "10.137.0.254");
        assert_eq!(vmid_to_ipv4("10.137", 255), "10.137.1.1");
        assert_eq!(vmid_to_ipv4("10.137", 508), "10.137.1.254");
        assert_eq!(vmid_to_ipv4("10.137", 509), "10.137.2.1");
    }

    #[test]
    fn global_defaults() {
        let app = App::new(HostInfo::default());
        let g = |n| {
            let (d, v) = get(&app, Holder::Global, n).unwrap();
            format_get(d, def(&app, Holder::Global, n).unwrap().ty, &v)
        };
        assert_eq!(g("default_guivm"), "default=True type=vm dom0");
        assert_eq!(g("default_netvm"), "default=True type=vm ");
        assert_eq!(g("default_qrexec_timeout"), "default=True type=int 60");
        assert_eq!(g("check_updates_vm"), "default=True type=bool True");
        assert_eq!(g("default_virt_mode"), "default=True type=str vm");
    }

    #[test]
    fn int_parsing_is_strict() {
        assert_eq!(parse_int("42"), Some(42));
        assert_eq!(parse_int("-1"), Some(-1));
        assert_eq!(parse_int(""), None);
        assert_eq!(parse_int("4 2"), None);
        assert_eq!(parse_int("+4"), None);
        assert_eq!(parse_int("9999999999999999999"), None);
    }
}
